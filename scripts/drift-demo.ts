import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { freePort } from '../harness/free-port.js';
import { predictClient } from '../harness/load-client.js';
import { startRedis } from '../harness/redis-server.js';
import { ROOT, spawnService, type LogRecord } from '../harness/service-process.js';
import { loadMnist, splitDataset } from '../services/trainer/src/pipeline/ingest.js';
import { readManifest } from '@conveyor/shared/model/runtime';

/**
 * `make drift-demo`: the whole system (Redis, a worker, the gateway, the monitor) with the default
 * monitor settings; normal traffic through the HTTP API, then noisy scans, then normal traffic
 * again. The monitor's alert lines are printed as they happen: each drifting feature fires once and
 * resolves once. The report is written to docs/reports/drift-demo/.
 */
const phases = [
  { name: 'normal', requests: 1500 },
  { name: 'shifted (noisy scans)', requests: 1500 },
  { name: 'normal again', requests: 2000 },
];
const reportDir = path.join(ROOT, 'docs', 'reports', 'drift-demo');

const manifest = await readManifest(path.join(ROOT, 'models', 'digits'));
const split = manifest.training.split as { seed: number; train: number; validation: number };
const dataset = loadMnist();
const { test, validation } = splitDataset(dataset, split, split.seed);
const held = [...test, ...validation].map((i) => dataset.samples[i]!.pixels);
let noiseSeed = 1;
const noisy = (pixels: Uint8Array) =>
  Uint8Array.from(pixels, (v) => {
    noiseSeed = (Math.imul(noiseSeed, 1664525) + 1013904223) >>> 0;
    const u = (noiseSeed + 0.5) / 4294967296;
    noiseSeed = (Math.imul(noiseSeed, 1664525) + 1013904223) >>> 0;
    const n = Math.sqrt(-2 * Math.log(u)) * Math.cos((2 * Math.PI * noiseSeed) / 4294967296);
    return Math.max(0, Math.min(255, Math.round(v + 70 * n)));
  });
const png = (pixels: Uint8Array) =>
  sharp(pixels, { raw: { width: 28, height: 28, channels: 1 } })
    .png()
    .toBuffer();

const dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-drift-demo-'));
const redis = await startRedis({ dir });
const [port, monitorPort] = [await freePort(), await freePort()];
const monitorToken = randomBytes(24).toString('hex');
const env = { REDIS_URL: redis.url, REDIS_PREFIX: 'demo' };
const alertLine = (r: LogRecord) => {
  if (r.event !== 'alert') return;
  const w = r.window as { index: number };
  console.log(
    `  [monitor] ${String(r.severity).toUpperCase().padEnd(8)} ${String(r.feature).padEnd(16)} ${String(r.metric)} ${Number(r.value).toFixed(3)} (threshold ${String(r.threshold)}) window ${w.index} — ${String(r.msg)}`,
  );
};
const services = [
  spawnService('inference-worker', env, { built: true }),
  spawnService('gateway', { ...env, PORT: String(port), HOST: '127.0.0.1' }, { built: true }),
  spawnService(
    'monitor',
    {
      ...env,
      MONITOR_PORT: String(monitorPort),
      MONITOR_HOST: '127.0.0.1',
      MONITOR_TOKEN: monitorToken,
      REPORT_DIR: reportDir,
      REPORT_INTERVAL_MS: '0',
    },
    { built: true, onRecord: alertLine },
  ),
];
try {
  for (;;) {
    if (
      await fetch(`http://127.0.0.1:${port}/ready`).then(
        (r) => r.ok,
        () => false,
      )
    )
      break;
    await new Promise((r) => setTimeout(r, 200));
  }
  const client = predictClient(port, 8);
  let offset = 0;
  for (const phase of phases) {
    console.log(`\n${phase.name}: ${phase.requests} requests (monitor windows of 500)`);
    const bodies = await Promise.all(
      Array.from({ length: phase.requests }, (_, i) => {
        const pixels = held[(offset + i) % held.length]!;
        return png(phase.name.startsWith('shifted') ? noisy(pixels) : pixels);
      }),
    );
    offset += phase.requests;
    let next = 0;
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (next < bodies.length) {
          const status = await client.send(bodies[next++]!, 'image/png');
          if (status !== 200) throw new Error(`request answered ${status}`);
        }
      }),
    );
    await new Promise((r) => setTimeout(r, 1500)); // let the monitor evaluate the last window
  }
  client.close();
  // Writing a report is the monitor's one protected route: it takes the bearer token.
  const written = await fetch(`http://127.0.0.1:${monitorPort}/reports`, {
    method: 'POST',
    headers: { authorization: `Bearer ${monitorToken}` },
  });
  if (!written.ok) throw new Error(`the monitor refused to write its report: HTTP ${written.status}`);
  const relative = (file: string) => path.relative(ROOT, path.join(reportDir, file));
  console.log(`\nreport: ${relative('drift.csv')}, ${relative('drift.png')}`);
  const drift = (await fetch(`http://127.0.0.1:${monitorPort}/drift`).then((r) => r.json())) as {
    models: { states: Record<string, string> }[];
  };
  console.log(`states now: ${JSON.stringify(drift.models[0]?.states)}`);
} finally {
  await Promise.all(services.map((s) => s.stop()));
  await redis.stop();
  rmSync(dir, { recursive: true, force: true });
}
