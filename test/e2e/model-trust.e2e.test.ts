import { generateKeyPairSync } from 'node:crypto';
import { cpSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import pino from 'pino';
import { MlflowClient, type ModelVersion } from '@conveyor/shared/mlflow/client';
import { RELEASE_SIGNATURE_FILE, RELEASE_SIGNATURE_TAG, signModelFolder } from '@conveyor/shared/model/signature';
import { RegistrySource } from '../../services/inference-worker/src/model/registry-source.js';
import { monitorMetrics } from '../../services/monitor/src/http/metrics.js';
import { ProfileSource } from '../../services/monitor/src/reference/profile-source.js';
import { tagsOf } from '../../services/trainer/src/registry/gate.js';
import { PromotionPolicy } from '../../services/trainer/src/registry/policy.js';
import { promote } from '../../services/trainer/src/registry/promote.js';
import { sharedMlflow } from '../support/mlflow.js';
import { registerFolder } from '../support/registry.js';

/**
 * What a model signature binds, against a real MLflow server, through the trainer's promotion (the
 * only place a version is released: signed for its model name and version), the worker's registry
 * source and the monitor's profile source. The attacker can write to the registry (register
 * versions, copy tags, add artifacts) but never holds the trainer's private key.
 */
describe('model trust: releases bind name, version and every file (real MLflow)', function () {
  this.timeout(300_000);
  const name = `trust-${Math.random().toString(36).slice(2, 8)}`;
  const other = `${name}-other`;
  const trainer = generateKeyPairSync('ed25519');
  const lax = PromotionPolicy.parse({ minTestAccuracy: 0.9, maxRegression: 1, maxLatencyP95Ms: 1000 });
  const strict = PromotionPolicy.parse({ minTestAccuracy: 0.999, maxRegression: 0, maxLatencyP95Ms: 1000 });
  const quiet = pino({ level: 'silent' });
  let tmp: string;
  let client: MlflowClient;
  let v1: ModelVersion;
  const lines: { msg: string; problem?: string; model?: unknown }[] = [];
  const log = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line) as (typeof lines)[number]) });

  /** A copy of the committed digit folder with the trainer's build signature (what trackRun uploads). */
  async function built(label: string): Promise<string> {
    const dir = path.join(tmp, label);
    cpSync('models/digits', dir, { recursive: true });
    await signModelFolder(dir, trainer.privateKey);
    return dir;
  }
  /** The worker's registry source with the trainer's public key, on a fresh cache. */
  const worker = (label: string) =>
    new RegistrySource(client, `models:/${name}@production`, path.join(tmp, `cache-${label}`), log, trainer.publicKey);
  async function refusal(version: string): Promise<string> {
    const error = await worker(`v${version}`)
      .fetch({ name, version })
      .catch((e: unknown) => e);
    expect(error, `version ${version} was served`).to.be.instanceOf(Error);
    const line = lines.findLast((l) => l.msg === 'refusing a model version the trainer did not sign');
    expect(line?.model).to.deep.equal({ name, version });
    return line!.problem!;
  }
  const copyRelease = async (from: ModelVersion, to: ModelVersion) =>
    client.setModelVersionTag(to.name, to.version, RELEASE_SIGNATURE_TAG, tagsOf(from)[RELEASE_SIGNATURE_TAG]!);
  const fresh = (v: ModelVersion) => client.getModelVersion(v.name, v.version);

  before(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'conveyor-trust-'));
    client = new MlflowClient((await sharedMlflow()).url);
    await registerFolder(client, name, await built('v1'));
    expect((await promote(client, name, lax, { signingKey: trainer.privateKey }, quiet)).promoted).to.equal(true);
    v1 = await fresh((await client.getVersionByAlias(name, 'production'))!);
  });
  after(() => rmSync(tmp, { recursive: true, force: true }));

  it('serves a version the gate passed: promote released it for its name and version', async () => {
    expect(tagsOf(v1)[RELEASE_SIGNATURE_TAG]).to.be.a('string');
    const dir = await worker('good').fetch({ name, version: v1.version });
    expect(existsSync(path.join(dir, RELEASE_SIGNATURE_FILE))).to.equal(true);
    // Verified again from the cache at a restart, without the registry.
    expect(await worker('good').lastKnown()).to.deep.equal({ name, version: v1.version });
  });

  it('never serves a version the gate rejected: it has no release', async () => {
    const rejected = await registerFolder(client, name, await built('rejected'));
    const decision = await promote(client, name, strict, { signingKey: trainer.privateKey }, quiet);
    expect(decision).to.include({ passed: false, promoted: false });
    expect(tagsOf(await fresh(rejected))[RELEASE_SIGNATURE_TAG]).to.equal(undefined);
    expect(await refusal(rejected.version)).to.match(/was never released by the trainer/);
  });

  it('refuses an old version replayed as a new one (its folder registered again, its release copied)', async () => {
    const replay = await registerFolder(client, name, path.join(tmp, 'v1'));
    await copyRelease(v1, replay);
    expect(await refusal(replay.version)).to.equal(`signed for ${name} v${v1.version}, not ${name} v${replay.version}`);
  });

  it("refuses another model's released folder registered under this name", async () => {
    await registerFolder(client, other, await built('other'));
    expect((await promote(client, other, lax, { signingKey: trainer.privateKey }, quiet)).promoted).to.equal(true);
    const theirs = await fresh((await client.getVersionByAlias(other, 'production'))!);
    const swapped = await registerFolder(client, name, path.join(tmp, 'other'));
    await copyRelease(theirs, swapped);
    expect(await refusal(swapped.version)).to.equal(`signed for ${other} v${theirs.version}, not ${name} v${swapped.version}`);
  });

  it('refuses a released version once an unsigned file is added to its folder', async () => {
    const padded = await registerFolder(client, name, await built('padded'));
    expect(
      (await promote(client, name, lax, { version: padded.version, signingKey: trainer.privateKey }, quiet)).promoted,
    ).to.equal(true);
    await client.uploadArtifact(padded.source!, 'extra.bin', Buffer.from('not signed'));
    expect(await refusal(padded.version)).to.equal('extra.bin is not covered by the signature (an extra file)');
  });

  it('does not release a folder holding a file its build signature does not list', async () => {
    const dir = await built('unlisted');
    writeFileSync(path.join(dir, 'extra.bin'), 'not signed');
    const version = await registerFolder(client, name, dir);
    const error = await promote(client, name, lax, { version: version.version, signingKey: trainer.privateKey }, quiet).catch(
      (e: unknown) => e,
    );
    expect((error as Error).message).to.match(/is not a folder the trainer built: extra.bin is not covered/);
    expect(tagsOf(await fresh(version))[RELEASE_SIGNATURE_TAG]).to.equal(undefined);
  });

  it('does not release a build whose registry figures were changed to pass the gate', async () => {
    const version = await registerFolder(client, name, await built('forged-figures'));
    await client.setModelVersionTag(name, version.version, 'test_accuracy', '0.9999');
    const error = await promote(client, name, strict, { version: version.version, signingKey: trainer.privateKey }, quiet).catch(
      (e: unknown) => e,
    );
    expect((error as Error).message).to.match(
      /the gate's figures differ from the signed folder's \(test_accuracy: tag 0.9999, signed 0.984646\)/,
    );
    expect(tagsOf(await fresh(version))[RELEASE_SIGNATURE_TAG]).to.equal(undefined);
  });

  describe("the monitor's reference profiles", () => {
    const model = (version: string) => ({ name, model: { name, version } }) as Parameters<ProfileSource['get']>[0];

    it('uses the profile the release lists, and refuses a replaced one or one of an unreleased version (log + metric)', async () => {
      const profiles = new ProfileSource({ client, signingKey: trainer.publicKey }, log);
      const metrics = monitorMetrics({} as never, { stats: {} } as never, {}, profiles);
      const refusedTotal = async () =>
        (await metrics.getSingleMetric('conveyor_monitor_reference_profiles_refused_total')!.get()).values[0]?.value ?? 0;
      expect(await profiles.get(model(v1.version))).to.not.equal(undefined);

      const swapped = await registerFolder(client, name, await built('profile-swap'));
      expect(
        (await promote(client, name, lax, { version: swapped.version, signingKey: trainer.privateKey }, quiet)).promoted,
      ).to.equal(true);
      await client.uploadArtifact(swapped.source!, 'reference-profile.json', Buffer.from(JSON.stringify({ forged: true })));
      expect(await profiles.get(model(swapped.version))).to.equal(undefined);
      expect(lines.findLast((l) => l.msg === 'refusing a reference profile the trainer did not sign')).to.deep.include({
        problem: 'reference-profile.json differs from the one the release signature lists',
      });

      const unreleased = await registerFolder(client, name, await built('profile-unreleased'));
      expect(await profiles.get(model(unreleased.version))).to.equal(undefined);
      expect(lines.findLast((l) => l.msg === 'refusing a reference profile the trainer did not sign')?.problem).to.match(
        /has no release signature/,
      );
      expect(profiles.stats.refused).to.equal(2);
      expect(await refusedTotal()).to.equal(2);
    });
  });
});
