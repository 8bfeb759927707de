import { connect, type Socket } from 'node:net';
import { expect } from 'chai';
import { randomPrefix } from '../support/redis.js';
import { until } from '../support/wait.js';
import { dumpLogsOnFailure, startGateway, stopAll, type Gateway } from '../support/services.js';

/**
 * What an outsider can make one gateway hold: bytes being received at once, connections, and time
 * for a body that trickles in. Each bound is reached here through raw sockets, as an attacker would.
 */
describe('gateway resource bounds', function () {
  this.timeout(60_000);
  const prefix = randomPrefix('limits');
  let gateway: Gateway;
  let url: URL;
  const open: Socket[] = [];

  before(async () => {
    gateway = await startGateway(prefix, {
      MAX_INFLIGHT_UPLOAD_BYTES: String(5 * 1024 * 1024),
      MIN_UPLOAD_BYTES_PER_SECOND: '16384',
      UPLOAD_GRACE_MS: '1000',
      MAX_CONNECTIONS: '6',
    });
    url = new URL(gateway.url);
  });
  afterEach(function () {
    dumpLogsOnFailure(this, gateway);
    for (const s of open.splice(0)) s.destroy();
  });
  after(() => stopAll(gateway));

  /**
   * Opens a connection and sends a request head declaring `length` bytes of multipart body, plus
   * `first` bytes of it. Asynchronous: no worker runs here, and a synchronous request for a model
   * without one is refused (503 no-worker) before any of its body is read.
   */
  const PART_HEAD = '--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\nContent-Type: image/png\r\n\r\n';
  const CLOSING = '\r\n--b--\r\n';
  function startUpload(length: number, first = 1024): Promise<{ socket: Socket; answer: Promise<string> }> {
    return new Promise((resolve, reject) => {
      const socket = connect(Number(url.port), url.hostname, () => {
        socket.write(
          `POST /v1/predict HTTP/1.1\r\nHost: ${url.host}\r\nConnection: close\r\nPrefer: respond-async\r\n` +
            `Content-Type: multipart/form-data; boundary=b\r\nContent-Length: ${length}\r\n\r\n${PART_HEAD}`,
        );
        socket.write(Buffer.alloc(first, 7));
        resolve({ socket, answer });
      });
      open.push(socket);
      let text = '';
      const answer = new Promise<string>((done) => {
        socket.on('data', (d: Buffer) => (text += d.toString()));
        socket.on('close', () => done(text));
      });
      socket.on('error', reject);
    });
  }

  const status = (text: string) => Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0);

  it('refuses with 503 + Retry-After, unread, what would exceed the bytes it may receive at once', async () => {
    await startUpload(3 * 1024 * 1024);
    const second = await startUpload(3 * 1024 * 1024);
    const answer = await Promise.race([
      new Promise<string>((resolve) => {
        let text = '';
        second.socket.on('data', (d: Buffer) => {
          text += d.toString();
          if (text.includes('\r\n\r\n')) resolve(text);
        });
      }),
      second.answer,
    ]);
    expect(status(answer)).to.equal(503);
    expect(answer).to.match(/retry-after: 2/i);
    expect(answer).to.contain('/problems/overloaded');
    // Once the first upload is gone, its share is free again: the gateway's own gauge says when.
    for (const s of open.splice(0)) s.destroy();
    await until('the gateway to give back the bytes of the abandoned upload', async () => {
      const metrics = await (await fetch(`${gateway.url}/metrics`)).text();
      return /^conveyor_upload_bytes_in_flight 0$/m.test(metrics);
    });
    // A third upload of the same size is then read to its end and judged on its bytes (not an
    // image: 415), where it would have been refused unread (503) with the first still held.
    const length = 3 * 1024 * 1024;
    const third = await startUpload(length);
    third.socket.write(Buffer.alloc(length - PART_HEAD.length - 1024 - CLOSING.length, 7));
    third.socket.write(CLOSING);
    const judged = await third.answer;
    expect(status(judged), judged).to.equal(415);
    expect(judged).to.contain('/problems/unsupported-media-type');
  });

  it('answers 408 and closes the connection when a body trickles in below the minimum rate', async () => {
    const { socket, answer } = await startUpload(1024 * 1024, 100);
    // 50 bytes/s against a minimum of 16 KB/s: the megabyte would take hours, so an answer at all
    // means the gateway gave up on the rate, which the problem then names.
    const drip = setInterval(() => socket.writable && socket.write(Buffer.alloc(10, 1)), 200);
    const text = await answer;
    clearInterval(drip);
    expect(status(text)).to.equal(408);
    expect(text).to.contain('/problems/request-timeout');
    expect(text).to.match(/the minimum is 16384 bytes\/s/);
    const line = await gateway.waitFor((r) => r.msg === 'request' && r.status === 408);
    expect(line.route).to.equal('/v1/predict');
  });

  it('holds at most MAX_CONNECTIONS connections: at the limit the oldest idle ones are closed to make room', async () => {
    // One after another, so that "oldest" is well defined.
    const sockets: { socket: Socket; closed: () => boolean }[] = [];
    for (let i = 0; i < 10; i++) {
      sockets.push(
        await new Promise<{ socket: Socket; closed: () => boolean }>((resolve) => {
          let closed = false;
          const socket = connect(Number(url.port), url.hostname, () => resolve({ socket, closed: () => closed }));
          socket.on('close', () => (closed = true));
          socket.on('error', () => undefined);
          open.push(socket);
        }),
      );
    }
    await until('four connections to be closed', () => Promise.resolve(sockets.filter((s) => s.closed()).length >= 4));
    // Silent connections are all idle: each newcomer past the sixth displaced the oldest of them.
    expect(sockets.map((s) => s.closed())).to.deep.equal([true, true, true, true, false, false, false, false, false, false]);
  });
});
