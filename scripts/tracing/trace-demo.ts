import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { freePort } from '../../harness/free-port.js';
import { startJaeger } from '../../harness/jaeger.js';
import { startRedis } from '../../harness/redis-server.js';
import { ROOT, spawnService } from '../../harness/service-process.js';
import { renderWaterfall } from './waterfall.js';

/**
 * The trace in docs/tracing.md, made for real: a private Redis, Jaeger, a gateway and a worker taking
 * one job at a time, both exporting to Jaeger. A backlog of asynchronous jobs is queued first, then
 * one synchronous request with a caller's traceparent, which waits behind them. Its trace is read
 * back from Jaeger's API and written to docs/evidence/trace-example.json, and drawn as
 * docs/images/trace-waterfall.svg (scripts/tracing/waterfall.ts).
 *
 *   node --conditions=conveyor-source --import tsx scripts/tracing/trace-demo.ts [--backlog 60]
 */
const { values } = parseArgs({ options: { backlog: { type: 'string', default: '60' } } });
const backlog = Number(values.backlog);
const image = readFileSync(path.join(ROOT, 'docs/examples/seven.png'));
const dir = mkdtempSync(path.join(os.tmpdir(), 'trace-demo-'));
const redis = await startRedis({ dir });
const jaeger = await startJaeger();
const port = await freePort();
const otel = { OTEL_EXPORTER_OTLP_ENDPOINT: jaeger.otlpEndpoint, OTEL_BSP_SCHEDULE_DELAY: '200' };
const common = { REDIS_URL: redis.url, REDIS_PREFIX: 'demo', LOG_LEVEL: 'warn', ...otel };
const worker = spawnService('inference-worker', { ...common, LOG_LEVEL: 'info', WORKER_CONCURRENCY: '1' }, { keep: 50 });
const gateway = spawnService('gateway', { ...common, PORT: String(port), HOST: '127.0.0.1' }, { keep: 50 });
const base = `http://127.0.0.1:${port}`;
try {
  await worker.waitFor((r) => r.msg === 'worker ready', 60_000);
  for (;;) {
    if ((await fetch(`${base}/v2/models/digits/ready`).catch(() => undefined))?.ok) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const post = (headers: Record<string, string>) => {
    const form = new FormData();
    form.append('file', new Blob([image]), 'seven.png');
    return fetch(`${base}/v1/predict`, { method: 'POST', body: form, headers });
  };
  // The backlog: untraced callers (sampled out), so the picture holds the one request.
  await Promise.all(
    Array.from({ length: backlog }, () => post({ prefer: 'respond-async', traceparent: `00-${hex(16)}-${hex(8)}-00` })),
  );
  const traceId = hex(16);
  const answer = await post({ traceparent: `00-${traceId}-${hex(8)}-01` });
  if (answer.status !== 200) throw new Error(`the traced request answered ${answer.status}`);
  const want = ['POST /v1/predict', 'queue wait', 'process inference', 'commit and reply'];
  let spans = await jaeger.trace(traceId);
  while (!want.every((name) => spans.some((s) => s.operationName === name))) {
    await new Promise((resolve) => setTimeout(resolve, 200));
    spans = await jaeger.trace(traceId);
  }
  // What the docs keep: the span tree and its attributes (no process ids, no host names).
  const kept = spans
    .map(({ traceID, spanID, operationName, references, startTime, duration, tags, service }) => ({
      traceID,
      spanID,
      operationName,
      references: references.map(({ refType, traceID: t, spanID: s }) => ({ refType, traceID: t, spanID: s })),
      startTime,
      duration,
      tags: tags.filter((t) => !['conveyor.worker', 'service.instance.id'].includes(t.key)),
      processID: '',
      service,
    }))
    .sort((a, b) => a.startTime - b.startTime);
  writeFileSync(path.join(ROOT, 'docs/evidence/trace-example.json'), `${JSON.stringify(kept, null, 2)}\n`);
  writeFileSync(
    path.join(ROOT, 'docs/images/trace-waterfall.svg'),
    renderWaterfall(kept, `A synchronous digits request behind ${backlog} queued jobs (one worker slot), as Jaeger received it`),
  );
  console.log(`trace ${traceId}: ${kept.length} spans → docs/evidence/trace-example.json, docs/images/trace-waterfall.svg`);
} finally {
  await Promise.all([gateway.stop(), worker.stop()]);
  await jaeger.stop();
  await redis.stop();
  rmSync(dir, { recursive: true, force: true });
}

function hex(bytes: number): string {
  return randomBytes(bytes).toString('hex');
}
