import { appendFileSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { parseArgs } from 'node:util';
import zlib from 'node:zlib';

/**
 * The soak's hostile clients (loadtests/soak.ts starts each as a process of its own), one per kind,
 * each bounded in count and time and sending only to loopback addresses. Each stops by itself after
 * --seconds (or on SIGTERM), then writes what it did as JSON to --out; the ids of the jobs the
 * gateway accepted for it are appended to --ids as they come (the soak checks every one finished).
 *
 *   callback-bomb    a receiver that answers every delivery with a huge body (--bomb-mb MiB of zeros),
 *                    plain and gzip-compressed by turns; one async job naming it every --every s
 *   callback-silent  a receiver that accepts and never answers; one async job naming it every --every s
 *   callback-polite  the control: a receiver that answers 204 at once; one job every --every s; the
 *                    delay from acceptance to delivery is what the other receivers may stretch
 *   conn-hog         one address (--from) holding up to --sockets idle connections, each reopened
 *                    as it is cut (at most --connects-per-second new ones)
 *   upload-hog       --uploads uploads from one address, each declaring --upload-bytes and trickling
 *                    at --bytes-per-second (over the gateway's 16 KB/s floor), each restarted when answered
 *   flood            one tenant (one address) submitting --jobs async jobs as fast as admission lets it,
 *                    --concurrency at once, waiting Retry-After on a 503/429
 *
 *   node --conditions=conveyor-source --import tsx loadtests/hostile.ts <kind> --gateway URL --seconds N
 *        --image file --out summary.json --ids ids.txt [options]
 */
const KINDS = ['callback-bomb', 'callback-silent', 'callback-polite', 'conn-hog', 'upload-hog', 'flood'] as const;
type Kind = (typeof KINDS)[number];

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    gateway: { type: 'string' },
    seconds: { type: 'string', default: '60' },
    image: { type: 'string' },
    out: { type: 'string' },
    ids: { type: 'string' },
    from: { type: 'string', default: '127.0.0.1' },
    every: { type: 'string', default: '5' },
    'bomb-mb': { type: 'string', default: '128' },
    sockets: { type: 'string', default: '1100' },
    'connects-per-second': { type: 'string', default: '50' },
    uploads: { type: 'string', default: '24' },
    'upload-bytes': { type: 'string', default: String(3 * 1024 * 1024) },
    'bytes-per-second': { type: 'string', default: String(20 * 1024) },
    jobs: { type: 'string', default: '10000' },
    concurrency: { type: 'string', default: '16' },
  },
});
const kind = positionals[0] as Kind;
if (!KINDS.includes(kind)) throw new Error(`unknown kind ${kind} (known: ${KINDS.join(', ')})`);
if (!values.gateway) throw new Error('--gateway is required');
const gateway = new URL(values.gateway);
if (!isLoopback(gateway.hostname) || !isLoopback(values.from)) throw new Error('hostile clients target loopback addresses only');
const num = (name: keyof typeof values): number => {
  const n = Number(values[name]);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} needs a positive number`);
  return n;
};
const deadline = Date.now() + num('seconds') * 1000;
let stopping = false;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const running = () => !stopping && Date.now() < deadline;
const stats: Record<string, unknown> = { kind, from: values.from };
const count = (key: string, by = 1) => (stats[key] = ((stats[key] as number | undefined) ?? 0) + by);

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** One request on a fresh connection from `from`; resolves with the status, headers and (capped) body. */
function request(
  method: string,
  pathname: string,
  headers: Record<string, string | number>,
  body?: Buffer,
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: gateway.hostname,
        port: gateway.port,
        method,
        path: pathname,
        headers,
        localAddress: values.from,
        agent: false,
        timeout: 30_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          if (size < 65_536) chunks.push(c);
          size += c.length;
        });
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString() }),
        );
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end(body);
  });
}

const image = values.image ? readFileSync(values.image) : undefined;

/** Submits one async job for the default model (optionally with a callback); the id if accepted. */
async function submit(callbackUrl?: string): Promise<{ status: number; id?: string; retryAfter?: number }> {
  if (!image) throw new Error('--image is required for this kind');
  try {
    const headers: Record<string, string | number> = {
      'content-type': 'image/png',
      'content-length': image.length,
      prefer: 'respond-async',
    };
    if (callbackUrl) headers['callback-url'] = callbackUrl;
    const reply = await request('POST', '/v1/predict', headers, image);
    count(`status_${reply.status}`);
    if (reply.status === 202) {
      const id = (JSON.parse(reply.body) as { id: string }).id;
      if (values.ids) appendFileSync(values.ids, `${id}\n`);
      count('accepted');
      return { status: 202, id };
    }
    const retryAfter = Number(reply.headers['retry-after']);
    return { status: reply.status, ...(Number.isFinite(retryAfter) ? { retryAfter } : {}) };
  } catch {
    count('no_answer');
    return { status: 0 };
  }
}

/** Runs `submit` every --every seconds until the deadline. */
async function every(callbackUrl: string, onAccepted?: (id: string) => void): Promise<void> {
  const period = num('every') * 1000;
  while (running()) {
    const started = Date.now();
    const reply = await submit(callbackUrl);
    if (reply.id) onAccepted?.(reply.id);
    await sleep(Math.max(0, period - (Date.now() - started)));
  }
}

function listen(server: net.Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port)));
}

async function callbackBomb(): Promise<void> {
  const size = num('bomb-mb') * 1024 * 1024;
  // Made once: the compressed form of `size` zeros is about a thousandth of it.
  const gzipped = zlib.gzipSync(Buffer.alloc(size), { level: 9 });
  stats.bomb_bytes = size;
  stats.gzip_bytes = gzipped.length;
  const chunk = Buffer.alloc(64 * 1024);
  let turn = 0;
  const server = http.createServer((req, res) => {
    req.resume();
    count('deliveries');
    if (turn++ % 2 === 1) {
      count('gzip_answers');
      res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip', 'content-length': gzipped.length });
      res.end(gzipped);
      return;
    }
    count('plain_answers');
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': size });
    let sent = 0;
    const pump = () => {
      while (sent < size) {
        const part = chunk.subarray(0, Math.min(chunk.length, size - sent));
        sent += part.length;
        count('plain_bytes_sent', part.length);
        if (!res.write(part)) return void res.once('drain', pump);
      }
      res.end();
    };
    res.on('close', () => sent < size && count('plain_cut_short'));
    pump();
  });
  const port = await listen(server);
  await every(`http://127.0.0.1:${port}/bomb`);
  server.closeAllConnections();
  server.close();
}

async function callbackSilent(): Promise<void> {
  const held = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    count('deliveries');
    held.add(socket);
    socket.on('data', () => undefined);
    socket.on('close', () => held.delete(socket));
    socket.on('error', () => undefined);
  });
  const port = await listen(server);
  await every(`http://127.0.0.1:${port}/silent`);
  for (const s of held) s.destroy();
  server.close();
}

async function callbackPolite(): Promise<void> {
  const accepted = new Map<string, number>();
  const delays: number[] = [];
  const server = http.createServer((req, res) => {
    const id = String(req.headers['webhook-id'] ?? '').replace(/^msg_/, '');
    req.resume();
    count('deliveries');
    const at = accepted.get(id);
    if (at !== undefined) {
      delays.push(Date.now() - at);
      accepted.delete(id);
    }
    res.writeHead(204).end();
  });
  const port = await listen(server);
  await every(`http://127.0.0.1:${port}/polite`, (id) => accepted.set(id, Date.now()));
  // Deliveries still owed get a little longer (they count as late, not lost, if they come).
  const grace = Date.now() + 30_000;
  while (accepted.size > 0 && Date.now() < grace && !stopping) await sleep(200);
  delays.sort((a, b) => a - b);
  const q = (p: number) => (delays.length ? delays[Math.min(delays.length - 1, Math.floor(p * delays.length))]! : null);
  Object.assign(stats, {
    delivered: delays.length,
    undelivered: accepted.size,
    delay_p50_ms: q(0.5),
    delay_p95_ms: q(0.95),
    delay_max_ms: delays.at(-1) ?? null,
  });
  server.closeAllConnections();
  server.close();
}

async function connHog(): Promise<void> {
  const max = num('sockets');
  const perSecond = num('connects-per-second');
  const open = new Set<net.Socket>();
  let peak = 0;
  while (running()) {
    const tickStarted = Date.now();
    // Up to perSecond/10 new connections per 100 ms, as long as fewer than `max` are open.
    for (let i = 0; i < perSecond / 10 && open.size < max; i++) {
      const socket = net.connect({ host: gateway.hostname, port: Number(gateway.port), localAddress: values.from });
      count('connects');
      open.add(socket);
      socket.on('error', () => undefined);
      socket.on('close', () => {
        open.delete(socket);
        if (!stopping) count('cut_by_server');
      });
    }
    peak = Math.max(peak, open.size);
    await sleep(Math.max(0, 100 - (Date.now() - tickStarted)));
  }
  stats.peak_open = peak;
  stopping = true;
  for (const s of open) s.destroy();
}

async function uploadHog(): Promise<void> {
  const uploads = num('uploads');
  const declared = num('upload-bytes');
  const rate = num('bytes-per-second');
  const piece = Buffer.alloc(Math.max(1, Math.round(rate / 10)), 0x41);
  const live = new Set<http.ClientRequest>();
  const one = async (): Promise<void> => {
    while (running()) {
      await new Promise<void>((resolve) => {
        const req = http.request({
          host: gateway.hostname,
          port: gateway.port,
          method: 'POST',
          path: '/v1/predict',
          headers: { 'content-type': 'image/png', 'content-length': declared },
          localAddress: values.from,
          agent: false,
        });
        live.add(req);
        count('started');
        let sent = 0;
        const timer = setInterval(() => {
          if (!running() || sent >= declared) return clearInterval(timer);
          const part = piece.subarray(0, Math.min(piece.length, declared - sent));
          sent += part.length;
          count('bytes_sent', part.length);
          req.write(part);
          if (sent >= declared) req.end();
        }, 100);
        const done = () => {
          clearInterval(timer);
          live.delete(req);
          resolve();
        };
        req.on('response', (res) => {
          count(`status_${res.statusCode}`);
          res.resume();
          res.on('end', done);
          res.on('error', done);
        });
        req.on('error', () => {
          count('cut');
          done();
        });
      });
      if (running()) await sleep(100);
    }
  };
  const all = Promise.all(Array.from({ length: uploads }, one));
  while (running()) await sleep(200);
  for (const req of live) req.destroy();
  await all;
}

async function flood(): Promise<void> {
  const target = num('jobs');
  let submitted = 0;
  const one = async (): Promise<void> => {
    while (running() && submitted < target) {
      submitted++;
      const reply = await submit();
      if (reply.status !== 202) {
        submitted--;
        // Refused (503/429: Retry-After) or no answer: back off as a client should, within bounds.
        await sleep(Math.min(10, Math.max(1, reply.retryAfter ?? 1)) * 1000);
      }
    }
  };
  await Promise.all(Array.from({ length: num('concurrency') }, one));
  stats.target = target;
}

const started = Date.now();
const work = {
  'callback-bomb': callbackBomb,
  'callback-silent': callbackSilent,
  'callback-polite': callbackPolite,
  'conn-hog': connHog,
  'upload-hog': uploadHog,
  flood,
}[kind];
process.once('SIGTERM', () => (stopping = true));
process.once('SIGINT', () => (stopping = true));
await work();
stats.seconds = Math.round((Date.now() - started) / 1000);
if (values.out) writeFileSync(values.out, `${JSON.stringify(stats, null, 2)}\n`);
process.exit(0);
