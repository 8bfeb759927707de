import { generateKeyPairSync } from 'node:crypto';
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { MlflowClient } from '@conveyor/shared/mlflow/client';
import { RELEASE_SIGNATURE_TAG, releaseStatement, signModelFolder } from '@conveyor/shared/model/signature';
import pino from 'pino';
import { PromotionPolicy } from '../../services/trainer/src/registry/policy.js';
import { promote } from '../../services/trainer/src/registry/promote.js';
import { digitPng, heldOutDigits } from '../support/images.js';
import { predict } from '../support/http.js';
import { until } from '../support/wait.js';
import { sharedMlflow } from '../support/mlflow.js';
import { randomPrefix } from '../support/redis.js';
import { registerFolder } from '../support/registry.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';

/**
 * Whoever can write to the registry can register a version and move `production`; the checksum
 * the worker checks comes from the same registry. With the trainer's public key configured, a
 * worker serves only versions released (signed for their name and version when the promotion gate
 * passed) with the trainer's private key, which the registry never holds. What a release binds is
 * tested piece by piece in model-trust.e2e.test.ts.
 */
describe('signed model versions (real MLflow)', function () {
  this.timeout(180_000);
  const prefix = randomPrefix('signed');
  const name = `signed-${Math.random().toString(36).slice(2, 8)}`;
  const trainer = generateKeyPairSync('ed25519');
  const attacker = generateKeyPairSync('ed25519');
  let tmp: string;
  let client: MlflowClient;
  let gateway: Gateway;
  let worker: Awaited<ReturnType<typeof startWorker>>;
  let seven: Buffer;
  const policy = PromotionPolicy.parse({ minTestAccuracy: 0.9, maxRegression: 1, maxLatencyP95Ms: 1000 });
  /** The trainer's promotion with its signing key: the gate, then the release, then `production` moves. */
  const release = async (version: string) =>
    expect(
      (await promote(client, name, policy, { version, signingKey: trainer.privateKey }, pino({ level: 'silent' }))).promoted,
    ).to.equal(true);

  /** A copy of the committed model folder, signed with `key` (or not at all). */
  async function folder(label: string, key?: typeof trainer.privateKey): Promise<string> {
    const dir = path.join(tmp, label);
    cpSync('models/digits', dir, { recursive: true });
    if (key) await signModelFolder(dir, key);
    return dir;
  }

  before(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'conveyor-signed-'));
    const publicKeyFile = path.join(tmp, 'trainer.pub.pem');
    writeFileSync(publicKeyFile, trainer.publicKey.export({ type: 'spki', format: 'pem' }));
    const mlflow = await sharedMlflow();
    client = new MlflowClient(mlflow.url);
    const first = await registerFolder(client, name, await folder('v1', trainer.privateKey));
    await release(first.version);
    const { dataset, split } = await heldOutDigits();
    seven = await digitPng(dataset.samples[split.test.find((i) => dataset.samples[i]!.label === 7)!]!.pixels);
    gateway = await startGateway(prefix);
    worker = await startWorker(prefix, {
      MLFLOW_TRACKING_URI: mlflow.url,
      MODEL_URI: `models:/${name}@production`,
      MODEL_CACHE_DIR: path.join(tmp, 'cache'),
      MODEL_POLL_INTERVAL_MS: '200',
      MODEL_SIGNING_PUBLIC_KEY_FILE: publicKeyFile,
    });
  });
  afterEach(function () {
    dumpLogsOnFailure(this, gateway, worker);
  });
  after(async () => {
    await stopAll(gateway, worker);
    rmSync(tmp, { recursive: true, force: true });
  });

  it('serves a version the trainer signed', async () => {
    const reply = await predict(gateway.url, seven);
    expect(reply.status).to.equal(200);
    expect(reply.body.model).to.include({ name, version: '1' });
  });

  for (const [label, key] of [
    ['unsigned', undefined],
    ['signed with another key', attacker.privateKey],
    ['built by the trainer but never released', trainer.privateKey],
  ] as const) {
    it(`refuses a version moved to production that is ${label}, and keeps serving the signed one`, async () => {
      const dir = await folder(label.replace(/ /g, '-'), key);
      const forged = await registerFolder(client, name, dir);
      // The attacker can sign a release too, with their own key.
      if (key === attacker.privateKey)
        await client.setModelVersionTag(
          name,
          forged.version,
          RELEASE_SIGNATURE_TAG,
          await releaseStatement(dir, { name, version: forged.version }, key),
        );
      await client.setAlias(name, 'production', forged.version);
      await worker.waitFor(
        (r) => r.msg === 'refusing a model version the trainer did not sign' && String(r.dir).endsWith(forged.version),
      );
      const reply = await predict(gateway.url, seven);
      expect(reply.status).to.equal(200);
      expect(reply.body.model).to.include({ name, version: '1' });
    });
  }

  it('follows a newly signed version', async () => {
    const next = await registerFolder(client, name, await folder('v-next', trainer.privateKey));
    await release(next.version);
    await until(`the worker serving version ${next.version}`, async () => {
      const reply = await predict(gateway.url, seven);
      return (reply.body.model as { version: string }).version === next.version;
    });
  });
});
