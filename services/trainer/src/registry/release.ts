import { createPublicKey, type KeyObject } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import type { Logger } from '@conveyor/shared/logger';
import type { MlflowClient, ModelVersion } from '@conveyor/shared/mlflow/client';
import { MANIFEST_FILE } from '@conveyor/shared/model/manifest';
import { RELEASE_SIGNATURE_TAG, releaseStatement, signatureProblem } from '@conveyor/shared/model/signature';
import { tagsOf } from './gate.js';

/**
 * Release: what makes a registered version servable by workers that hold the trainer's public key.
 * Called by `promote` once the gate has passed, before `production` moves — so a version the gate
 * rejected (or never saw) has no release and is never served, and a release names its model and
 * version, so its files cannot be served under another one.
 *
 * Before signing, the version's folder is downloaded and must carry the trainer's own build
 * signature over exactly its files (what the registry holds is what the trainer built), and the
 * figures the gate read from the version's tags must be the ones the signed folder records (a
 * registry writer could otherwise put a rejected build's folder behind a passing build's figures).
 */
export class ReleaseRefused extends Error {}

const SignedFigures = z.object({
  version: z.string(),
  metrics: z.object({ testAccuracy: z.number().optional(), validationAccuracy: z.number().optional() }).default({}),
});

const SignedEvaluation = z.object({ latency: z.object({ batch1P95Ms: z.number() }).optional() });

export async function releaseVersion(
  client: MlflowClient,
  version: ModelVersion,
  signingKey: KeyObject,
  log: Logger,
): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'conveyor-release-'));
  const folder = path.join(dir, 'model');
  try {
    await client.downloadDirectory(await client.getDownloadUri(version.name, version.version), folder);
    const manifest = SignedFigures.parse(JSON.parse(await readFile(path.join(folder, MANIFEST_FILE), 'utf8')));
    const problem = await signatureProblem(folder, createPublicKey(signingKey), { kind: 'build', build: manifest.version }, [
      MANIFEST_FILE,
    ]);
    if (problem) throw new ReleaseRefused(`${version.name} v${version.version} is not a folder the trainer built: ${problem}`);
    // evaluation.json (trainer builds) is covered by the build signature just checked.
    const evaluation = await readFile(path.join(folder, 'evaluation.json'), 'utf8').then(
      (text) => SignedEvaluation.parse(JSON.parse(text)),
      () => undefined,
    );
    const tags = tagsOf(version);
    const mismatches = [
      ['build', manifest.version],
      ['test_accuracy', manifest.metrics.testAccuracy],
      ['val_accuracy', manifest.metrics.validationAccuracy],
      ['onnx_latency_b1_p95_ms', evaluation?.latency?.batch1P95Ms],
    ].filter(([key, signed]) => signed !== undefined && tags[key as string] !== String(signed));
    if (mismatches.length > 0)
      throw new ReleaseRefused(
        `${version.name} v${version.version}: the gate's figures differ from the signed folder's (${mismatches
          .map(([key, signed]) => `${String(key)}: tag ${tags[key as string] ?? 'missing'}, signed ${String(signed)}`)
          .join('; ')})`,
      );
    const statement = await releaseStatement(folder, { name: version.name, version: version.version }, signingKey);
    await client.setModelVersionTag(version.name, version.version, RELEASE_SIGNATURE_TAG, statement);
    log.info({ model: { name: version.name, version: version.version } }, 'model version released (signed for serving)');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
