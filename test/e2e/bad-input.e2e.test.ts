import { request as httpRequest } from 'node:http';
import { connect, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { Queue } from 'bullmq';
import { expect } from 'chai';
import sharp from 'sharp';
import { QUEUES } from '@conveyor/shared/contract/jobs.contract';
import { digitPng, heldOutDigits, jpegDeclaringMore, pngBombHeader, thinStrip } from '../support/images.js';
import { pollUntilDone, predict, request, uploadForm, type Reply } from '../support/http.js';
import { randomPrefix, testRedisUrl } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';
import { startUrlServer, type UrlServer } from '../support/url-server.js';
import { until } from '../support/wait.js';

/**
 * Every class of bad input gets a clear 4xx problem document with the request id, never a 5xx,
 * never a crash, and never a poisoned queue: bad images fail their job once, without retries.
 */
function expectProblem(reply: Reply, status: number, slug: string): void {
  expect(reply.status, JSON.stringify(reply.body)).to.equal(status);
  expect(reply.headers.get('content-type')).to.match(/^application\/problem\+json/);
  expect(reply.body).to.include({ status, type: `/problems/${slug}` });
  expect(reply.body.title).to.be.a('string');
  expect(reply.body.detail).to.be.a('string');
  expect(reply.body.requestId).to.equal(reply.headers.get('x-request-id'));
}

describe('bad input', function () {
  this.timeout(60_000);
  const prefix = randomPrefix('bad');
  let gateway: Gateway;
  let strictGateway: Gateway;
  let worker: Awaited<ReturnType<typeof startWorker>>;
  let server: UrlServer;
  let seven: Buffer;
  let queue: Queue;

  before(async () => {
    const { dataset, split } = await heldOutDigits();
    seven = await digitPng(dataset.samples[split.test.find((i) => dataset.samples[i]!.label === 7)!]!.pixels);
    server = await startUrlServer({
      '/seven.png': { type: 'image/png', body: seven },
      '/page.html': { type: 'text/html', body: Buffer.from('<!doctype html><html><body>hello</body></html>') },
      '/lying.png': { type: 'image/png', body: Buffer.from('<svg xmlns="http://www.w3.org/2000/svg"></svg>') },
    });
    const urlEnv = { URL_ALLOW_CIDRS: '127.0.0.1/32', URL_TOTAL_TIMEOUT_MS: '800', URL_CONNECT_TIMEOUT_MS: '300' };
    [gateway, strictGateway, worker] = await Promise.all([
      startGateway(prefix, urlEnv),
      startGateway(prefix),
      startWorker(prefix),
    ]);
    queue = new Queue(QUEUES.inference, { connection: { url: testRedisUrl() }, prefix });
  });

  afterEach(function () {
    dumpLogsOnFailure(this, gateway, strictGateway, worker);
  });

  after(async () => {
    await stopAll(gateway, strictGateway, worker);
    await queue.close();
    await server.close();
  });

  describe('size', () => {
    it('refuses an upload over the limit with 413', async () => {
      expectProblem(await predict(gateway.url, randomBytes(3 * 1024 * 1024 + 1)), 413, 'payload-too-large');
    });

    it('refuses a raw body whose Content-Length is over the limit without reading it', async () => {
      const reply = await rawRequest(
        gateway.url,
        { 'content-type': 'image/jpeg', 'content-length': String(50 * 1024 * 1024) },
        0,
      );
      expect(reply.status).to.equal(413);
      expect(reply.bytesSent).to.equal(0);
    });

    it('stops reading a chunked multipart upload once it passes the limit', async () => {
      const boundary = 'conveyor-test-boundary';
      const head = `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n`;
      const reply = await rawRequest(
        gateway.url,
        { 'content-type': `multipart/form-data; boundary=${boundary}`, 'transfer-encoding': 'chunked' },
        200 * 1024 * 1024,
        Buffer.from(head),
      );
      expect(reply.status).to.equal(413);
      expect(reply.bytesSent, 'answered long before the 200 MB body ended').to.be.lessThan(100 * 1024 * 1024);
    });
  });

  describe('type, from the bytes', () => {
    const cases: [string, () => Buffer][] = [
      ['SVG', () => Buffer.from('<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')],
      ['PDF', () => Buffer.from('%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF')],
      ['HTML', () => Buffer.from('<!doctype html><html><body><img src=x onerror=alert(1)></body></html>')],
      ['plain text', () => Buffer.from('seven')],
      ['random bytes', () => randomBytes(4096)],
      ['a ZIP archive', () => Buffer.from('504b0304140000000000', 'hex')],
    ];
    for (const [name, make] of cases) {
      it(`refuses ${name} with 415, whatever the file name and Content-Type claim`, async () => {
        const form = uploadForm(make(), 'seven.png', 'file', 'image/png');
        expectProblem(await request(`${gateway.url}/v1/predict`, { method: 'POST', body: form }), 415, 'unsupported-media-type');
      });
    }

    it('accepts a real PNG sent with a misleading name and Content-Type', async () => {
      const form = uploadForm(seven, 'document.pdf', 'file', 'application/pdf');
      const reply = await request(`${gateway.url}/v1/predict`, { method: 'POST', body: form });
      expect(reply.status).to.equal(200);
    });

    it('refuses a request body that is neither multipart, JSON nor an image with 415', async () => {
      const reply = await request(`${gateway.url}/v1/predict`, {
        method: 'POST',
        body: 'hello',
        headers: { 'content-type': 'text/plain' },
      });
      expectProblem(reply, 415, 'unsupported-media-type');
    });
  });

  describe('undecodable images', () => {
    it('answers 422 for a truncated JPEG, failing its job once without retries', async () => {
      // Noisy, so that half of it is still plausible by size and the worker is the one to find the cut.
      const jpeg = await sharp({
        create: { width: 400, height: 300, channels: 3, background: '#000', noise: { type: 'gaussian', mean: 128, sigma: 40 } },
      })
        .jpeg()
        .toBuffer();
      const reply = await predict(gateway.url, jpeg.subarray(0, Math.floor(jpeg.length / 2)));
      expectProblem(reply, 422, 'undecodable-image');
      const jobId = reply.body.jobId as string;
      expect(jobId).to.be.a('string');
      // The result is published just before BullMQ records the failure: waited for.
      await until('BullMQ to record the failure', async () => (await queue.getJobState(jobId)) === 'failed');
      expect((await queue.getJob(jobId))?.attemptsStarted, 'attempts').to.equal(1);
      // Failed for good, so every line the worker writes about it is written by now; a later job's
      // line comes after them in the one log stream (buffered, flushed every 250 ms), so once it is
      // read, so are they: counted then, with no sleep guessing at the flush.
      const later = await predict(gateway.url, seven);
      await worker.waitFor((r) => r.jobId === later.body.id && r.msg === 'prediction');
      expect(worker.records.filter((r) => r.jobId === jobId && r.msg === 'rejected input')).to.have.length(1);
    });

    it('answers 422 for a JPEG whose header declares more pixels than its data holds, never a prediction on grey fill', async () => {
      // Far more than the data can hold: refused at the gateway from the markers, before queueing.
      const patched = await predict(gateway.url, await jpegDeclaringMore(6000));
      expectProblem(patched, 422, 'undecodable-image');
      expect(patched.body.jobId).to.equal(undefined);
      // Twice the rows the data holds: plausible by size, so the worker decodes it and sees the data end.
      const real = Buffer.from(
        await sharp({
          create: { width: 300, height: 200, channels: 3, background: '#000', noise: { type: 'gaussian', mean: 128, sigma: 40 } },
        })
          .jpeg()
          .toBuffer(),
      );
      const sof = real.findIndex((b, i) => b === 0xff && real[i + 1] === 0xc0);
      real.writeUInt16BE(400, sof + 5);
      const reply = await predict(gateway.url, real);
      expectProblem(reply, 422, 'undecodable-image');
      expect(reply.body.detail).to.match(/truncated/);
    });

    it('refuses a thin strip inside the pixel limit (1 × 40,000,000) from its header, without queueing', async () => {
      // The file is a PNG header and nothing else: judged from the header (a decode would find no data).
      const reply = await predict(gateway.url, pngBombHeader(1, 40_000_000));
      expectProblem(reply, 422, 'image-too-large');
      expect(reply.body.limitSide).to.equal(16_384);
      expect(reply.body.jobId).to.equal(undefined);
    });

    it('reports the failure when polled for an asynchronous request', async () => {
      const reply = await predict(gateway.url, seven.subarray(0, 200), { Prefer: 'respond-async' });
      expect(reply.status).to.equal(202);
      const done = await pollUntilDone(gateway.url, reply.body.id as string);
      expect(done.body.status).to.equal('failed');
      expect(done.body.error).to.include({ status: 422, slug: 'undecodable-image' });
    });

    it('refuses a decompression bomb from its header alone, without queueing', async () => {
      // A header and no pixel data: only a judgement from the header answers image-too-large.
      const reply = await predict(gateway.url, pngBombHeader(50_000, 50_000));
      expectProblem(reply, 422, 'image-too-large');
      expect(reply.body.limitPixels).to.be.a('number');
      expect(reply.body.jobId).to.equal(undefined);
    });
  });

  describe('a job past its processing deadline', () => {
    const slowPrefix = randomPrefix('deadline');
    let relaxed: Gateway;
    let strictWorker: Awaited<ReturnType<typeof startWorker>>;
    let slowQueue: Queue;
    // Limits relaxed so that a thin strip gets through to a worker; the deadline is what stops it.
    const env = { MAX_IMAGE_SIDE: '100000000', MAX_ASPECT_RATIO: '100000000' };

    before(async () => {
      [relaxed, strictWorker] = await Promise.all([
        startGateway(slowPrefix, env),
        startWorker(slowPrefix, { ...env, PREPROCESS_TIMEOUT_MS: '100' }),
      ]);
      slowQueue = new Queue(QUEUES.inference, { connection: { url: testRedisUrl() }, prefix: slowPrefix });
    });
    afterEach(function () {
      dumpLogsOnFailure(this, relaxed, strictWorker);
    });
    after(async () => {
      await stopAll(relaxed, strictWorker);
      await slowQueue.close();
    });

    it('fails with a clear 422 problem once, not retried, and the worker goes on', async () => {
      const reply = await predict(relaxed.url, await thinStrip(3_000_000));
      expectProblem(reply, 422, 'processing-deadline');
      const jobId = reply.body.jobId as string;
      await until('BullMQ to record the failure', async () => (await slowQueue.getJobState(jobId)) === 'failed');
      expect((await slowQueue.getJob(jobId))?.attemptsStarted, 'attempts').to.equal(1);
      expect((await predict(relaxed.url, seven)).status).to.equal(200);
    });
  });

  describe('malformed requests', () => {
    it('answers 400 for invalid JSON', async () => {
      const reply = await request(`${gateway.url}/v1/predict`, {
        method: 'POST',
        body: '{"url":',
        headers: { 'content-type': 'application/json' },
      });
      expectProblem(reply, 400, 'invalid-request');
    });

    it('answers 400 for JSON without a url', async () => {
      const reply = await request(`${gateway.url}/v1/predict`, {
        method: 'POST',
        body: '{"link":"x"}',
        headers: { 'content-type': 'application/json' },
      });
      expectProblem(reply, 400, 'invalid-request');
    });

    it('answers 400, not 500, for an empty body that declares multipart without a boundary', async () => {
      const reply = await request(`${gateway.url}/v1/predict`, {
        method: 'POST',
        headers: { 'content-type': 'multipart/form-data', prefer: 'respond-async' },
      });
      expectProblem(reply, 400, 'invalid-request');
    });

    it('answers 400, not 500, for a multipart body without a boundary', async () => {
      const reply = await request(`${gateway.url}/v1/predict`, {
        method: 'POST',
        body: 'not a form',
        headers: { 'content-type': 'multipart/form-data', prefer: 'respond-async' },
      });
      expectProblem(reply, 400, 'invalid-request');
    });

    it('answers 400 for a multipart form with the image in the wrong field', async () => {
      expectProblem(
        await request(`${gateway.url}/v1/predict`, { method: 'POST', body: uploadForm(seven, 'a.png', 'image') }),
        400,
        'invalid-request',
      );
    });

    it('answers 400 for both a file and a url', async () => {
      const form = uploadForm(seven, 'a.png');
      form.append('url', server.url('/seven.png'));
      expectProblem(await request(`${gateway.url}/v1/predict`, { method: 'POST', body: form }), 400, 'invalid-request');
    });

    it('answers 400 for two files', async () => {
      const form = uploadForm(seven, 'a.png');
      form.append('file', new Blob([seven]), 'b.png');
      expectProblem(await request(`${gateway.url}/v1/predict`, { method: 'POST', body: form }), 400, 'invalid-request');
    });

    it('answers 405 with Allow for a wrong method, and 404 for an unknown route', async () => {
      const wrong = await request(`${gateway.url}/v1/predict`, { method: 'GET' });
      expectProblem(wrong, 405, 'method-not-allowed');
      expect(wrong.headers.get('allow')).to.contain('POST');
      expectProblem(await request(`${gateway.url}/v2/nothing`), 404, 'not-found');
    });
  });

  describe('URLs', () => {
    const byUrl = (base: string, url: string) =>
      request(`${base}/v1/predict`, {
        method: 'POST',
        body: JSON.stringify({ url }),
        headers: { 'content-type': 'application/json' },
      });

    it('predicts from an allowed URL, and from a multipart url field', async () => {
      const reply = await byUrl(gateway.url, server.url('/seven.png'));
      expect(reply.status, JSON.stringify(reply.body)).to.equal(200);
      expect((reply.body.prediction as { label: string }).label).to.equal('7');
      const form = new FormData();
      form.append('url', server.url('/redirect-ok'));
      expect((await request(`${gateway.url}/v1/predict`, { method: 'POST', body: form })).status).to.equal(200);
    });

    it('refuses loopback, private, link-local (metadata) and IPv6 loopback addresses by default', async () => {
      for (const url of [
        server.url('/seven.png'),
        'http://169.254.169.254/latest/meta-data/',
        'http://10.0.0.1/x.png',
        `http://[::1]:${server.port}/seven.png`,
        'http://0.0.0.0/',
      ]) {
        expectProblem(await byUrl(strictGateway.url, url), 422, 'url-not-allowed');
      }
    });

    it('refuses an IPv4-compatible IPv6 notation of loopback, even where 127.0.0.1 itself is allowed', async () => {
      for (const base of [gateway.url, strictGateway.url]) {
        expectProblem(await byUrl(base, `http://[::127.0.0.1]:${server.port}/seven.png`), 422, 'url-not-allowed');
      }
    });

    it('checks every redirect hop against the policy, credentials included', async () => {
      expectProblem(await byUrl(gateway.url, server.url('/redirect-private')), 422, 'url-not-allowed');
      const withCredentials = await byUrl(gateway.url, server.url('/redirect-credentials'));
      expectProblem(withCredentials, 422, 'url-not-allowed');
      expect(JSON.stringify(withCredentials.body)).not.to.contain('secret');
      expectProblem(await byUrl(gateway.url, server.url('/redirect-file')), 422, 'url-not-allowed');
    });

    it('refuses non-http schemes and URLs with credentials', async () => {
      expectProblem(await byUrl(gateway.url, 'file:///etc/passwd'), 422, 'url-not-allowed');
      expectProblem(await byUrl(gateway.url, 'ftp://127.0.0.1/x.png'), 422, 'url-not-allowed');
      expectProblem(await byUrl(gateway.url, `http://user:secret@127.0.0.1:${server.port}/seven.png`), 422, 'url-not-allowed');
      expectProblem(await byUrl(gateway.url, 'not a url'), 400, 'invalid-request');
    });

    it('gives up on a server that stalls, at its total timeout', async () => {
      const reply = await byUrl(gateway.url, server.url('/slow'));
      expectProblem(reply, 422, 'url-fetch-failed');
      // The gateway's own deadline (URL_TOTAL_TIMEOUT_MS=800) ended it, not the server (which never does).
      expect(reply.body.detail).to.equal('Fetching the URL took longer than 800 ms');
    });

    it('applies the size cap while downloading, declared or not', async () => {
      expectProblem(await byUrl(gateway.url, server.url('/endless')), 413, 'payload-too-large');
      expectProblem(await byUrl(gateway.url, server.url('/declared-huge')), 413, 'payload-too-large');
    });

    it('applies the same byte checks to downloaded content', async () => {
      expectProblem(await byUrl(gateway.url, server.url('/page.html')), 415, 'unsupported-media-type');
      expectProblem(await byUrl(gateway.url, server.url('/lying.png')), 415, 'unsupported-media-type');
    });

    it('reports upstream errors as 422', async () => {
      const reply = await byUrl(gateway.url, server.url('/missing.png'));
      expectProblem(reply, 422, 'url-fetch-failed');
      expect(reply.body.upstreamStatus).to.equal(404);
    });
  });

  describe('clients that hang up', () => {
    it('are not server errors: no 5xx in the access log or the metrics, no error line', async () => {
      const url = new URL(gateway.url);
      const boundary = 'conveyor-abort';
      const head = `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n`;
      const aborts = 20;
      // Every upload is in progress at once before any hangs up (a barrier, not timing), so each is a
      // request the gateway has begun to read. Each declares 512 KiB: the 20 hold 10 MiB of the
      // client's 16 MiB upload share, so none is refused 429 before its hang-up is seen (with 1 MiB
      // each, 4 of 20 were: a CI run timed out on 16 of 20 499 lines).
      const declared = 512 * 1024;
      const sockets = await Promise.all(
        Array.from(
          { length: aborts },
          () =>
            new Promise<Socket>((resolve, reject) => {
              const socket = connect(Number(url.port), url.hostname, () => {
                socket.write(
                  `POST /v1/predict HTTP/1.1\r\nHost: ${url.host}\r\nContent-Type: multipart/form-data; boundary=${boundary}\r\n` +
                    `Content-Length: ${declared}\r\n\r\n${head}`,
                );
                socket.write(randomBytes(64 * 1024), () => resolve(socket));
              });
              socket.on('error', reject);
            }),
        ),
      );
      // Each request is in the gateway's hands (its upload reserved) before any client hangs up.
      await until('every upload to be in progress', async () => {
        const metrics = await (await fetch(`${gateway.url}/metrics`)).text();
        return Number(/^conveyor_upload_bytes_in_flight (\d+)/m.exec(metrics)?.[1] ?? 0) >= aborts * declared || undefined;
      });
      await Promise.all(sockets.map((socket) => new Promise<void>((resolve) => socket.destroy().once('close', () => resolve()))));
      const closed = () => gateway.records.filter((r) => r.msg === 'request' && r.status === 499).length;
      // Each hang-up is logged once the gateway notices it, which on a loaded machine may take a while:
      // waited for as a condition (it failed under a fixed 5 s poll in a loaded CI run with 17 of 20).
      await until('a 499 access-log line for every hang-up', () => Promise.resolve(closed() >= aborts || undefined));
      expect(closed(), 'access-log lines with 499').to.equal(aborts);
      expect(gateway.records.filter((r) => r.msg === 'request' && Number(r.status) >= 500 && r.status !== 499)).to.deep.equal([]);
      expect(gateway.records.filter((r) => r.msg === 'unhandled error')).to.deep.equal([]);
      const metrics = await (await fetch(`${gateway.url}/metrics`)).text();
      expect(metrics).not.to.match(/conveyor_http_request_duration_seconds_count\{[^}]*status="5\d\d"/);
    });
  });

  describe('after all of that', () => {
    it('still predicts, with nothing stuck in the queue and no process crashed', async () => {
      const reply = await predict(gateway.url, seven);
      expect(reply.status).to.equal(200);
      // The worker publishes the result before BullMQ moves the job out of `active` (one more round trip),
      // so the answer can arrive while the job is still listed as active: give the queue a moment to settle.
      const counts = await settledCounts(queue, 5_000);
      expect(counts).to.include({ waiting: 0, prioritized: 0, active: 0, delayed: 0 });
      expect(worker.child.exitCode).to.equal(null);
      expect(gateway.running).to.equal(true);
      const serverErrors = gateway.records.filter((r) => r.msg === 'request' && Number(r.status) >= 500);
      expect(serverErrors).to.deep.equal([]);
    });
  });
});

/** The queue's counts once nothing is waiting (or prioritized), active or delayed, or as they stand when `timeoutMs` runs out. */
async function settledCounts(queue: Queue, timeoutMs: number): Promise<Record<string, number>> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    // Jobs wait in BullMQ's prioritized set (fair queuing gives each a priority), or in `wait`.
    const counts = await queue.getJobCounts('waiting', 'prioritized', 'active', 'delayed', 'failed');
    const busy = (counts.waiting ?? 0) + (counts.prioritized ?? 0) + (counts.active ?? 0) + (counts.delayed ?? 0);
    if (busy === 0 || performance.now() > deadline) return counts;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Sends a request body of `total` bytes in 64 KB chunks until the server answers. */
async function rawRequest(
  base: string,
  headers: Record<string, string>,
  total: number,
  head = Buffer.alloc(0),
): Promise<{ status: number; bytesSent: number }> {
  const url = new URL('/v1/predict', base);
  return new Promise((resolve, reject) => {
    let sent = 0;
    let answered = false;
    const req = httpRequest({ method: 'POST', hostname: url.hostname, port: url.port, path: url.pathname, headers }, (res) => {
      answered = true;
      res.resume();
      resolve({ status: res.statusCode ?? 0, bytesSent: sent });
      req.destroy();
    });
    req.on('error', (error) => {
      if (!answered) reject(error);
    });
    const chunk = randomBytes(64 * 1024);
    const pump = () => {
      if (head.length && sent === 0) {
        req.write(head);
        sent += head.length;
      }
      while (!answered && sent < total) {
        sent += chunk.length;
        if (!req.write(chunk)) return void req.once('drain', pump);
      }
      if (!answered && total > 0) req.end();
    };
    if (total === 0) req.flushHeaders();
    else pump();
  });
}
