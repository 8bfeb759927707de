import { createServer, type IncomingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import { createGzip } from 'node:zlib';

/**
 * A real HTTP server receiving callbacks in tests: it records every request, answers `/ok` with
 * 204, `/flaky` with 500 the first time and 204 after, `/redirect` with a 302 to `/ok`. Listens on
 * every interface, so that a gateway that let 127.0.0.2 through would reach it.
 *
 * Hostile answers, for the gateway's limits: `/huge` answers 200 with `hugeBytes` of body,
 * `/bomb` 200 with a gzip body that decodes to `hugeBytes` (a few hundred KB on the wire), both
 * streamed as the socket takes them (never held in this process) and cut when the gateway hangs
 * up; `/never` reads the delivery and never answers.
 */
export interface Delivery {
  readonly path: string;
  readonly headers: IncomingHttpHeaders;
  readonly body: string;
  readonly remote: string | undefined;
}

export interface CallbackReceiver {
  readonly port: number;
  readonly deliveries: Delivery[];
  /** Requests received and not yet closed (on `/never`: deliveries the gateway is still waiting on). */
  readonly open: () => number;
  /** Requests whose connection has closed, answered or not. */
  readonly closed: () => number;
  /** The most requests that were ever open at once. */
  readonly peakOpen: () => number;
  /** Bytes of hostile body written to the gateway before it hung up. */
  readonly hostileBytesSent: () => number;
  url(path: string, host?: string): string;
  close(): Promise<void>;
}

export interface ReceiverOptions {
  /** Decoded size of the `/huge` and `/bomb` answers (0, the default: no hostile answers). */
  readonly hugeBytes?: number;
  readonly host?: string;
}

const CHUNK = Buffer.alloc(1 << 20);

export async function startCallbackReceiver(options: ReceiverOptions = {}): Promise<CallbackReceiver> {
  const hugeBytes = options.hugeBytes ?? 0;
  const deliveries: Delivery[] = [];
  const seen = new Map<string, number>();
  let open = 0;
  let closed = 0;
  let peakOpen = 0;
  let hostileBytes = 0;
  // The gzip bomb is made once, a megabyte of zeros at a time.
  const bomb = hugeBytes === 0 ? Buffer.alloc(0) : await gzipOfZeros(hugeBytes);
  const server: Server = createServer((req, res) => {
    open += 1;
    peakOpen = Math.max(peakOpen, open);
    res.once('close', () => {
      open -= 1;
      closed += 1;
    });
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const path = (req.url ?? '/').split('?')[0]!;
      deliveries.push({
        path,
        headers: req.headers,
        body: Buffer.concat(chunks).toString('utf8'),
        remote: req.socket.localAddress,
      });
      const count = (seen.get(path) ?? 0) + 1;
      seen.set(path, count);
      if (path === '/never') return;
      if (path === '/huge') return streamHuge(res, hugeBytes, (n) => (hostileBytes += n));
      if (path === '/bomb') {
        hostileBytes += bomb.length;
        res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' }).end(bomb);
        return;
      }
      if (path === '/redirect') return void res.writeHead(302, { location: '/ok' }).end();
      const status = path === '/flaky' && count === 1 ? 500 : 204;
      res.writeHead(status).end();
    });
  });
  server.keepAliveTimeout = 100;
  await new Promise<void>((resolve) => server.listen(0, options.host ?? '0.0.0.0', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return {
    port,
    deliveries,
    open: () => open,
    closed: () => closed,
    peakOpen: () => peakOpen,
    hostileBytesSent: () => hostileBytes,
    url: (path, host = '127.0.0.1') => `http://${host}:${port}${path}`,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Writes `total` bytes of JSON-ish filler as fast as the peer reads, until it hangs up. */
function streamHuge(res: ServerResponse, total: number, sent: (n: number) => void): void {
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(total) });
  let left = total;
  const pump = () => {
    while (left > 0 && !res.destroyed) {
      const piece = left >= CHUNK.length ? CHUNK : CHUNK.subarray(0, left);
      left -= piece.length;
      sent(piece.length);
      if (!res.write(piece)) return void res.once('drain', pump);
    }
    if (left === 0) res.end();
  };
  pump();
}

async function gzipOfZeros(total: number): Promise<Buffer> {
  const gzip = createGzip({ level: 9 });
  const out: Buffer[] = [];
  gzip.on('data', (chunk: Buffer) => out.push(chunk));
  const done = new Promise((resolve) => gzip.once('end', resolve));
  for (let left = total; left > 0; left -= CHUNK.length) {
    const piece = left >= CHUNK.length ? CHUNK : CHUNK.subarray(0, left);
    if (!gzip.write(piece)) await new Promise((resolve) => gzip.once('drain', resolve));
  }
  gzip.end();
  await done;
  return Buffer.concat(out);
}
