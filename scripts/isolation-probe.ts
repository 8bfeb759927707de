/**
 * One hostile client beside one polite client, against a running gateway: how many of the polite
 * client's requests are served while the hostile one runs. Two probes, for the figures in
 * docs/isolation.md (not a test: it reports, it does not judge).
 *
 * - `connections`: the hog (from HOG_ADDRESS) keeps HOG_SOCKETS silent connections open, reopening
 *   each one the gateway closes; the polite client (POLITE_ADDRESS) sends GET /health on a fresh
 *   connection, one after another, each given 5 s.
 * - `uploads`: the hog keeps HOG_UPLOADS uploads open, each declaring HOG_UPLOAD_BYTES (64 MiB / 22) and trickling at
 *   20 KB/s (above the 16 KB/s floor), reopening each one that is answered; the polite client
 *   uploads a small PNG (Prefer: respond-async), one after another.
 *
 * Clients speak from distinct loopback addresses (all of 127/8 reaches the loopback interface on
 * Linux), so the gateway sees two clients.
 *
 *   node --conditions=conveyor-source --import tsx scripts/isolation-probe.ts http://127.0.0.1:8080 connections 30
 *   node --conditions=conveyor-source --import tsx scripts/isolation-probe.ts http://127.0.0.1:8080 uploads 30
 */
import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import sharp from 'sharp';

const [base = 'http://127.0.0.1:8080', probe = 'connections', secondsText = '30'] = process.argv.slice(2);
const url = new URL(base);
const port = Number(url.port);
const seconds = Number(secondsText);
const hogAddress = process.env.HOG_ADDRESS ?? '127.0.0.2';
const politeAddress = process.env.POLITE_ADDRESS ?? '127.0.0.3';

interface Tally {
  served: number;
  refused: Record<string, number>;
}

function politeRequest(method: string, path: string, headers: Record<string, string>, body?: Buffer): Promise<string> {
  return new Promise((resolve) => {
    const req = request(
      { host: url.hostname, port, localAddress: politeAddress, agent: false, method, path, headers, timeout: 5000 },
      (res) => {
        res.resume();
        res.on('end', () => resolve(String(res.statusCode)));
        res.on('error', () => resolve('reset'));
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (error: NodeJS.ErrnoException) => resolve(error.message === 'timeout' ? 'timeout' : (error.code ?? 'error')));
    req.end(body);
  });
}

async function politeLoop(until: number, once: () => Promise<string>, ok: string): Promise<Tally> {
  const tally: Tally = { served: 0, refused: {} };
  while (Date.now() < until) {
    const outcome = await once();
    if (outcome === ok) tally.served++;
    else tally.refused[outcome] = (tally.refused[outcome] ?? 0) + 1;
    await new Promise((r) => setTimeout(r, 200));
  }
  return tally;
}

function connectionHog(count: number): { stop(): void; connects(): number } {
  let running = true;
  let connects = 0;
  const sockets = new Set<Socket>();
  const open = () => {
    if (!running) return;
    connects++;
    const socket = connect({ host: url.hostname, port, localAddress: hogAddress });
    sockets.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => {
      sockets.delete(socket);
      if (running) setTimeout(open, 25);
    });
  };
  for (let i = 0; i < count; i++) open();
  return {
    connects: () => connects,
    stop() {
      running = false;
      for (const s of sockets) s.destroy();
    },
  };
}

function uploadHog(count: number): { stop(): void; answered(): number; statuses: Record<string, number> } {
  let running = true;
  let answered = 0;
  const statuses: Record<string, number> = {};
  const sockets = new Set<Socket>();
  // 22 of these fill the default 64 MiB budget to within 12 bytes: a smaller upload cannot slip in.
  const declared = Number(process.env.HOG_UPLOAD_BYTES ?? Math.floor((64 * 1024 * 1024) / 22));
  const open = () => {
    if (!running) return;
    const socket = connect({ host: url.hostname, port, localAddress: hogAddress }, () => {
      socket.write(
        `POST /v1/predict HTTP/1.1\r\nHost: ${url.host}\r\nPrefer: respond-async\r\nContent-Type: multipart/form-data; boundary=b\r\n` +
          `Content-Length: ${declared}\r\n\r\n--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\nContent-Type: application/octet-stream\r\n\r\n`,
      );
    });
    // 20 KB/s: 5 KB every 250 ms.
    const drip = setInterval(() => socket.writable && socket.write(Buffer.alloc(5 * 1024, 7)), 250);
    sockets.add(socket);
    socket.once('data', (d: Buffer) => {
      answered++;
      const status = /^HTTP\/1\.1 (\d{3})/.exec(d.toString())?.[1] ?? 'other';
      statuses[status] = (statuses[status] ?? 0) + 1;
      socket.destroy();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearInterval(drip);
      sockets.delete(socket);
      if (running) setTimeout(open, 25);
    });
  };
  for (let i = 0; i < count; i++) open();
  return {
    statuses,
    answered: () => answered,
    stop() {
      running = false;
      for (const s of sockets) s.destroy();
    },
  };
}

async function main(): Promise<void> {
  const until = Date.now() + seconds * 1000;
  if (probe === 'connections') {
    const sockets = Number(process.env.HOG_SOCKETS ?? 1100);
    const hog = connectionHog(sockets);
    // The hog first takes what it can; then the polite client tries.
    await new Promise((r) => setTimeout(r, 2000));
    const tally = await politeLoop(until, () => politeRequest('GET', '/health', {}), '200');
    hog.stop();
    console.log(JSON.stringify({ probe, seconds, hogSockets: sockets, hogConnects: hog.connects(), polite: tally }));
    return;
  }
  if (probe === 'uploads') {
    const uploads = Number(process.env.HOG_UPLOADS ?? 30);
    const png = await sharp({ create: { width: 28, height: 28, channels: 3, background: { r: 0, g: 0, b: 0 } } })
      .png()
      .toBuffer();
    const head = `--b\r\nContent-Disposition: form-data; name="file"; filename="d.png"\r\nContent-Type: image/png\r\n\r\n`;
    const body = Buffer.concat([Buffer.from(head), png, Buffer.from('\r\n--b--\r\n')]);
    const headers = { 'content-type': 'multipart/form-data; boundary=b', prefer: 'respond-async' };
    const hog = uploadHog(uploads);
    await new Promise((r) => setTimeout(r, 2000));
    const tally = await politeLoop(until, () => politeRequest('POST', '/v1/predict', headers, body), '202');
    hog.stop();
    console.log(
      JSON.stringify({
        probe,
        seconds,
        hogUploads: uploads,
        hogAnswered: hog.answered(),
        hogStatuses: hog.statuses,
        imageBytes: png.length,
        polite: tally,
      }),
    );
    return;
  }
  throw new Error(`unknown probe ${probe}: connections or uploads`);
}

await main();
