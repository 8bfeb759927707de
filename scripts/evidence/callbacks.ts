import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type ServerResponse } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { createGzip } from 'node:zlib';
import { Redis } from 'ioredis';
import { startRedis } from '../../harness/redis-server.js';
import { ROOT, spawnService, type ServiceProcess } from '../../harness/service-process.js';

/**
 * The figures of docs/callbacks.md: what hostile or dead callback receivers and waiting deliveries
 * cost a gateway. Run from a checkout (the services start from its sources, against a Redis of
 * their own):
 *
 *   node --conditions=conveyor-source --import tsx scripts/evidence/callbacks.ts [memory|isolation|redis]
 *
 * memory:    two receivers answering 2xx with HUGE_MB each at once, then one gzip answer decoding
 *            to HUGE_MB: the gateway's RSS before, at its peak, and after, and the attempts made.
 * isolation: DEAD_JOBS jobs whose receiver never answers, then one job for another receiver: how
 *            long that one's callback took from its request, beside the same without the dead ones.
 * redis:     WAITING jobs with callbacks and no worker: Redis commands per second over WINDOW_S
 *            seconds, idle and then with the jobs waiting.
 *
 * Environment: HUGE_MB (400), DEAD_JOBS (32), WAITING (2000), WINDOW_S (10). Not a test: a record.
 */
const HUGE = Number(process.env.HUGE_MB ?? 400) * 1024 * 1024;
const DEAD_JOBS = Number(process.env.DEAD_JOBS ?? 32);
const WAITING = Number(process.env.WAITING ?? 2000);
const WINDOW_S = Number(process.env.WINDOW_S ?? 10);
const seven = readFileSync(path.join(ROOT, 'docs/examples/seven.png'));
const secret = `whsec_${randomBytes(32).toString('base64')}`;
const MB = 1024 * 1024;

const CHUNK = Buffer.alloc(MB);
const arrivals = new Map<string, number>();
let bomb: Buffer = Buffer.alloc(0);

function rss(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('VmRSS:'));
  return Number(/(\d+)/.exec(line ?? '')?.[1] ?? NaN) * 1024;
}

async function receiver(): Promise<{ url: (p: string) => string; close: () => void }> {
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const p = req.url ?? '/';
      const id = /"id":"([0-9a-f-]{36})"/.exec(Buffer.concat(chunks).toString())?.[1];
      if (id) arrivals.set(id, Date.now());
      if (p === '/never') return;
      if (p === '/huge') return huge(res);
      if (p === '/bomb') return void res.writeHead(200, { 'content-encoding': 'gzip' }).end(bomb);
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return {
    url: (p) => `http://127.0.0.1:${port}${p}`,
    close: () => {
      server.closeAllConnections();
      server.close();
    },
  };
}

function huge(res: ServerResponse): void {
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(HUGE) });
  let left = HUGE;
  const pump = () => {
    while (left > 0 && !res.destroyed) {
      left -= CHUNK.length;
      if (!res.write(CHUNK)) return void res.once('drain', pump);
    }
    if (left <= 0) res.end();
  };
  pump();
}

async function gzipOfZeros(total: number): Promise<Buffer> {
  const gzip = createGzip({ level: 9 });
  const out: Buffer[] = [];
  gzip.on('data', (c: Buffer) => out.push(c));
  const done = new Promise((r) => gzip.once('end', r));
  for (let left = total; left > 0; left -= MB) if (!gzip.write(CHUNK)) await new Promise((r) => gzip.once('drain', r));
  gzip.end();
  await done;
  return Buffer.concat(out);
}

async function gateway(redisUrl: string, prefix: string, env: Record<string, string> = {}) {
  const proc = spawnService(
    'gateway',
    {
      REDIS_URL: redisUrl,
      REDIS_PREFIX: prefix,
      PORT: '0',
      HOST: '127.0.0.1',
      LOG_LEVEL: 'info',
      CALLBACK_SECRET: secret,
      URL_ALLOW_CIDRS: '127.0.0.1/32',
      ...env,
    },
    { logs: true },
  );
  const listening = await proc.waitFor((r) => r.msg === 'gateway listening', 60_000);
  return Object.assign(proc, { url: `http://127.0.0.1:${String(listening.port)}` });
}

async function worker(redisUrl: string, prefix: string) {
  const proc = spawnService('inference-worker', { REDIS_URL: redisUrl, REDIS_PREFIX: prefix, LOG_LEVEL: 'info' });
  await proc.waitFor((r) => r.msg === 'worker ready', 60_000);
  return proc;
}

async function submit(base: string, callbackUrl: string): Promise<string> {
  const form = new FormData();
  form.append('file', new Blob([seven]), 'seven.png');
  const res = await fetch(`${base}/v1/predict`, {
    method: 'POST',
    headers: { prefer: 'respond-async', 'callback-url': callbackUrl },
    body: form,
  });
  const body = (await res.json()) as { id?: string };
  if (res.status !== 202 || !body.id) throw new Error(`predict answered ${res.status}: ${JSON.stringify(body)}`);
  return body.id;
}

async function callbackState(base: string, id: string): Promise<{ state: string; attempts: number } | undefined> {
  const res = await fetch(`${base}/v1/jobs/${id}`);
  return ((await res.json()) as { callback?: { state: string; attempts: number } }).callback;
}

async function until<T>(probe: () => Promise<T | undefined>, timeoutMs: number): Promise<T | undefined> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const v = await probe();
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
  return undefined;
}

const stop = (...procs: ServiceProcess[]) => Promise.all(procs.map((p) => p.stop('SIGTERM')));

async function memory(redisUrl: string): Promise<void> {
  bomb = await gzipOfZeros(HUGE);
  const rx = await receiver();
  for (const [label, routes] of [
    [`two ${HUGE / MB} MB answers at once`, ['/huge', '/huge']],
    [`one ${bomb.length >> 10} KB gzip answer (${HUGE / MB} MB decoded)`, ['/bomb']],
  ] as const) {
    // A fresh prefix, worker and gateway per case: retries of one case must not run in the next.
    const prefix = `memory-${randomBytes(3).toString('hex')}`;
    const [g, w] = await Promise.all([gateway(redisUrl, prefix), worker(redisUrl, prefix)]);
    const pid = g.child.pid!;
    await until(
      async () => ((await callbackState(g.url, await submit(g.url, rx.url('/ok'))))?.state === 'delivered' ? true : undefined),
      30_000,
    );
    const before = rss(pid);
    let peak = before;
    const sampler = setInterval(() => (peak = Math.max(peak, rss(pid))), 20);
    const ids = await Promise.all(routes.map((r) => submit(g.url, rx.url(r))));
    const states = await Promise.all(
      ids.map((id) =>
        until(async () => {
          const s = await callbackState(g.url, id);
          return s && (s.state !== 'pending' || s.attempts >= 2) ? s : undefined;
        }, 180_000),
      ),
    );
    clearInterval(sampler);
    const after = rss(pid);
    console.log(
      `${label}: RSS ${(before / MB).toFixed(0)} → peak ${(peak / MB).toFixed(0)} → after ${(after / MB).toFixed(0)} MB; ` +
        `callbacks ${JSON.stringify(states.map((s) => s && { state: s.state, attempts: s.attempts }))}`,
    );
    await stop(g, w);
  }
  rx.close();
}

async function isolation(redisUrl: string): Promise<void> {
  const rx = await receiver();
  const good = await receiver();
  const w = await worker(redisUrl, 'isolation');
  const g = await gateway(redisUrl, 'isolation');
  const delay = async () => {
    const t0 = Date.now();
    const id = await submit(g.url, good.url('/ok'));
    const at = await until(() => Promise.resolve(arrivals.get(id)), 300_000);
    return at === undefined ? NaN : at - t0;
  };
  const alone = await delay();
  for (let i = 0; i < DEAD_JOBS; i++) await submit(g.url, rx.url('/never'));
  // Let the dead receiver's deliveries take their slots.
  await new Promise((r) => setTimeout(r, 1000));
  const behind = await delay();
  console.log(
    `another receiver's callback: ${alone} ms alone, ${behind} ms behind ${DEAD_JOBS} deliveries to a receiver that never answers`,
  );
  await stop(g, w);
  rx.close();
  good.close();
}

async function redisOps(redisUrl: string): Promise<void> {
  const rx = await receiver();
  // One client sends them all: its share of pending callbacks is raised to fit (the old code had none).
  const g = await gateway(redisUrl, 'redis', { CALLBACK_MAX_PENDING_PER_CLIENT: String(WAITING + 100) });
  const redis = new Redis(redisUrl);
  const rate = async () => {
    const count = async () => Number(/total_commands_processed:(\d+)/.exec(await redis.info('stats'))?.[1]);
    const a = await count();
    const t0 = Date.now();
    await new Promise((r) => setTimeout(r, WINDOW_S * 1000));
    return ((await count()) - a) / ((Date.now() - t0) / 1000);
  };
  const idle = await rate();
  let next = 0;
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      while (next < WAITING) {
        next++;
        await submit(g.url, rx.url('/ok'));
      }
    }),
  );
  const waiting = await rate();
  console.log(
    `Redis commands/s over ${WINDOW_S} s: ${idle.toFixed(1)} idle, ${waiting.toFixed(1)} with ${WAITING} queued jobs waiting with callbacks (no worker)`,
  );
  redis.disconnect();
  await stop(g);
  rx.close();
}

const which = process.argv[2] ?? 'all';
const dir = mkdtempSync(path.join(os.tmpdir(), 'callback-figures-'));
const redis = await startRedis({ dir });
try {
  if (which === 'memory' || which === 'all') await memory(redis.url);
  if (which === 'isolation' || which === 'all') await isolation(redis.url);
  if (which === 'redis' || which === 'all') await redisOps(redis.url);
} finally {
  await redis.stop();
  rmSync(dir, { recursive: true, force: true });
}
