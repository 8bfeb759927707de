import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startRedis } from '../../harness/redis-server.js';
import { spawnService } from '../../harness/service-process.js';
import { addModel } from '../../services/inference-worker/src/models-cli/models.cli.js';

/**
 * The own-model journey, timed: `models add` on an ONNX file, then a gateway and a worker serving
 * it (from source, on free ports, a private redis-server), then the first prediction over HTTP.
 *
 *   node --conditions=conveyor-source --import tsx scripts/models/own-model-journey.ts MODEL.onnx LABELS PRESET IMAGE
 */
const [file, labels, preset, image] = process.argv.slice(2);
if (!file || !labels || !preset || !image) throw new Error('usage: own-model-journey.ts MODEL.onnx LABELS PRESET IMAGE');
const dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-journey-'));
const t0 = performance.now();
const lap = (what: string) => console.log(`${((performance.now() - t0) / 1000).toFixed(1).padStart(6)} s  ${what}`);
const { report } = await addModel({ file, name: 'mine', labels, preset, modelsDir: dir });
for (const line of report) console.log(`         ${line}`);
lap('models add done');
const redis = await startRedis({ dir });
const env = { REDIS_URL: redis.url, REDIS_PREFIX: 'journey', MODELS: 'mine', DEFAULT_MODEL: 'mine', MODELS_DIR: dir };
const gateway = spawnService('gateway', { ...env, PORT: '0', HOST: '127.0.0.1' });
const worker = spawnService('inference-worker', env);
try {
  const listening = await gateway.waitFor((r) => r.msg === 'gateway listening', 120_000);
  await worker.waitFor((r) => r.msg === 'worker ready', 120_000);
  lap('gateway and worker ready');
  const form = new FormData();
  form.append('file', new Blob([readFileSync(image)]), path.basename(image));
  const reply = await fetch(`http://127.0.0.1:${String(listening.port)}/v1/models/mine/predict`, { method: 'POST', body: form });
  const body = (await reply.json()) as { prediction?: unknown };
  lap(`first prediction: HTTP ${reply.status} ${JSON.stringify(body.prediction)}`);
} finally {
  await Promise.all([gateway.stop('SIGTERM'), worker.stop('SIGTERM')]);
  await redis.stop();
  rmSync(dir, { recursive: true, force: true });
}
