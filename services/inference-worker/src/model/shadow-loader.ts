import path from 'node:path';
import type { KeyObject } from 'node:crypto';
import type { MlflowClient } from '@conveyor/shared/mlflow/client';
import type { WorkerConfig } from '../config.js';
import type { ShadowLoader } from '../shadow/shadow-lanes.js';
import { RegistrySource } from './registry-source.js';
import { loadWarmModel } from './warm-up.js';

/**
 * How a shadow model is loaded (docs/shadow.md): a folder as a served one is (checked, warmed up),
 * or a registry version resolved, downloaded into MODEL_CACHE_DIR and verified (sha256, and the
 * release signature with a signing key) by the same RegistrySource the served models use; on a
 * session and inference thread of its own.
 */
export function shadowLoader(
  config: WorkerConfig,
  registry: { readonly client: MlflowClient; readonly signingKey: KeyObject | undefined } | undefined,
): ShadowLoader {
  // At a lower priority than production's sessions (SHADOW_NICENESS): the caller's next answer
  // comes first when a core is contended (loadtests/shadow-latency.ts measures the difference).
  const options = {
    threads: config.ORT_THREADS,
    offThread: config.INFERENCE_THREAD,
    ...(config.SHADOW_NICENESS > 0 ? { niceness: config.SHADOW_NICENESS } : {}),
  };
  return async (source, log) => {
    if (source.kind === 'folder') return { model: (await loadWarmModel(source.dir, options)).model };
    if (!registry) throw new Error('a registry shadow needs MLFLOW_TRACKING_URI');
    const from = new RegistrySource(registry.client, source.uri, path.resolve(config.MODEL_CACHE_DIR), log, registry.signingKey);
    const version = await from.resolve();
    return { model: (await loadWarmModel(await from.fetch(version), options)).model, registry: version };
  };
}
