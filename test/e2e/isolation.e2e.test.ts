import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { connect, type Socket } from 'node:net';
import { Writable } from 'node:stream';
import { expect } from 'chai';
import pino from 'pino';
import { loadConfig } from '@conveyor/shared/config';
import { GatewayConfig } from '../../services/gateway/src/config.js';
import { startGateway, type GatewayService } from '../../services/gateway/src/gateway.service.js';
import { solidImage } from '../support/images.js';
import { randomPrefix, testRedisUrl } from '../support/redis.js';
import { until } from '../support/wait.js';

/**
 * No client can starve another at the HTTP edge: connections, upload bytes in flight, the
 * per-address limits behind a proxy, failed authentications, the dashboard lockout, event streams
 * at shutdown, and the answers' own headers and wording. Each gateway runs in this process on port
 * 0 against the test Redis. Clients speak from distinct loopback addresses (127.0.0.2, .3, …: all of
 * 127/8 reaches the loopback interface on Linux), so "another client" is another address, as it is
 * for the gateway.
 */
describe('isolation between clients at the gateway', function () {
  this.timeout(90_000);
  const hog = '127.0.0.2';
  const polite = '127.0.0.3';

  interface Running {
    readonly service: GatewayService;
    readonly port: number;
    readonly records: Record<string, unknown>[];
  }
  const running: Running[] = [];

  async function gateway(env: Record<string, string>): Promise<Running> {
    const records: Record<string, unknown>[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        for (const line of chunk.toString().split('\n')) if (line) records.push(JSON.parse(line) as Record<string, unknown>);
        done();
      },
    });
    const log = pino({ level: 'debug' }, sink);
    const config = loadConfig(GatewayConfig, {
      REDIS_URL: testRedisUrl(),
      REDIS_PREFIX: randomPrefix('isolation'),
      PORT: '0',
      HOST: '127.0.0.1',
      ...env,
    });
    const service = await startGateway(config, log);
    const started = { service, port: service.port, records };
    running.push(started);
    return started;
  }

  after(async () => {
    await Promise.allSettled(running.map((g) => g.service.stop()));
  });

  interface Answer {
    status: number;
    headers: IncomingHttpHeaders;
    text: string;
  }

  /** One request on a connection of its own, from `from`. */
  function send(
    port: number,
    from: string,
    options: { method?: string; path: string; headers?: Record<string, string>; body?: Buffer | string },
  ): Promise<Answer> {
    return new Promise((resolve, reject) => {
      const req = httpRequest(
        {
          host: '127.0.0.1',
          port,
          localAddress: from,
          agent: false,
          method: options.method ?? 'GET',
          path: options.path,
          headers: options.headers,
        },
        (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (d: string) => (text += d));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text }));
        },
      );
      req.on('error', reject);
      req.end(options.body);
    });
  }

  /** A multipart predict body holding `image` in `file`. */
  function form(image: Buffer): { body: Buffer; headers: Record<string, string> } {
    const head = `--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n`;
    const body = Buffer.concat([Buffer.from(head), image, Buffer.from('\r\n--b--\r\n')]);
    return { body, headers: { 'content-type': 'multipart/form-data; boundary=b', prefer: 'respond-async' } };
  }

  async function metric(port: number, name: string): Promise<number | undefined> {
    const answer = await send(port, polite, { path: '/metrics' });
    const line = answer.text.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
    return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
  }

  describe('connections (MAX_CONNECTIONS, MAX_CONNECTIONS_PER_CLIENT)', () => {
    /**
     * A hog from `addresses` that keeps `perAddress` silent connections open from each, reopening
     * each one the gateway closes (as the attacker of the issue did), until stopped.
     */
    function connectionHog(port: number, addresses: readonly string[], perAddress: number) {
      let running = true;
      let closedByServer = 0;
      const sockets = new Set<Socket>();
      const open = (from: string) => {
        if (!running) return;
        const socket = connect({ host: '127.0.0.1', port, localAddress: from });
        sockets.add(socket);
        socket.on('error', () => undefined);
        socket.on('close', () => {
          sockets.delete(socket);
          if (!running) return;
          closedByServer++;
          // Reopened a moment later: a tight loop would only measure this machine.
          setTimeout(() => open(from), 20);
        });
      };
      for (const from of addresses) for (let i = 0; i < perAddress; i++) open(from);
      return {
        get closedByServer() {
          return closedByServer;
        },
        get open() {
          return sockets.size;
        },
        stop() {
          running = false;
          for (const s of sockets) s.destroy();
        },
      };
    }

    async function politeRequests(port: number, count: number): Promise<number[]> {
      const statuses: number[] = [];
      for (let i = 0; i < count; i++) {
        statuses.push(
          await send(port, polite, { path: '/health' }).then(
            (a) => a.status,
            () => 0,
          ),
        );
      }
      return statuses;
    }

    it('keeps serving a polite client while one address opens more connections than the total', async () => {
      const g = await gateway({ MAX_CONNECTIONS: '20', MAX_CONNECTIONS_PER_CLIENT: '8' });
      const attack = connectionHog(g.port, [hog], 40);
      try {
        // The hog has been turned away (more than its share), so it is trying for more than it holds.
        await until('the hog to be refused connections', () => Promise.resolve(attack.closedByServer >= 20));
        const statuses = await politeRequests(g.port, 10);
        expect(statuses).to.deep.equal(Array<number>(10).fill(200));
        expect(await metric(g.port, 'conveyor_http_connections_refused_total{reason="client"}')).to.be.greaterThan(0);
      } finally {
        attack.stop();
      }
    });

    it("at its share, closes the client's own oldest idle connection to serve its new one", async () => {
      // A client that pools keep-alive connections (the test runner's own fetch did: a bad-input
      // test found 3 of 20 new connections reset) fills its share with idle ones, then opens another.
      const g = await gateway({ MAX_CONNECTIONS: '20', MAX_CONNECTIONS_PER_CLIENT: '4' });
      const idle: Socket[] = [];
      try {
        for (let i = 0; i < 4; i++) {
          const socket = connect({ host: '127.0.0.1', port: g.port, localAddress: polite });
          socket.on('error', () => undefined);
          idle.push(socket);
        }
        await until('the share to be full', async () => (await metric(g.port, 'conveyor_http_connections_open')) === 4);
        const answer = await send(g.port, polite, { path: '/health' });
        expect(answer.status).to.equal(200);
        await until('its oldest idle connection to be closed', () => Promise.resolve(idle[0]!.closed));
      } finally {
        for (const s of idle) s.destroy();
      }
    });

    it('at the total, closes an idle connection of the biggest holder rather than refuse a newcomer', async () => {
      // Three hog addresses at their share hold more than the total: no room without closing one.
      const g = await gateway({ MAX_CONNECTIONS: '20', MAX_CONNECTIONS_PER_CLIENT: '8' });
      const attack = connectionHog(g.port, ['127.0.0.4', '127.0.0.5', '127.0.0.6'], 8);
      try {
        await until('the gateway to be full', async () => (await metric(g.port, 'conveyor_http_connections_open')) === 20);
        const statuses = await politeRequests(g.port, 10);
        expect(statuses).to.deep.equal(Array<number>(10).fill(200));
        expect(await metric(g.port, 'conveyor_http_connections_refused_total{reason="evicted"}')).to.be.greaterThan(0);
      } finally {
        attack.stop();
      }
    });
  });

  describe('upload bytes in flight (MAX_INFLIGHT_UPLOAD_BYTES, …_PER_CLIENT)', () => {
    it("holds a slow-upload hog to its share while another client's uploads succeed", async () => {
      const mib = 1024 * 1024;
      const g = await gateway({
        MAX_UPLOAD_BYTES: String(mib),
        MAX_INFLIGHT_UPLOAD_BYTES: String(8 * mib),
        MAX_INFLIGHT_UPLOAD_BYTES_PER_CLIENT: String(4 * mib),
        // The hog's bodies may trickle as long as they like: only the shares bound them here.
        MIN_UPLOAD_BYTES_PER_SECOND: '0',
      });
      // Ten uploads declaring 1 MiB each, 1 KiB sent, then nothing: more than the whole budget.
      const answers: string[] = [];
      const sockets: Socket[] = [];
      for (let i = 0; i < 10; i++) {
        const socket = connect({ host: '127.0.0.1', port: g.port, localAddress: hog }, () => {
          socket.write(
            `POST /v1/predict HTTP/1.1\r\nHost: x\r\nPrefer: respond-async\r\nContent-Type: multipart/form-data; boundary=b\r\n` +
              `Content-Length: ${mib}\r\n\r\n--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n`,
          );
          socket.write(Buffer.alloc(1024, 7));
        });
        let text = '';
        socket.on('data', (d: Buffer) => {
          if (text === '') answers.push((text = d.toString()));
        });
        socket.on('error', () => undefined);
        sockets.push(socket);
      }
      try {
        // Every one of the hog's uploads is either held (its bytes reserved) or refused; or the
        // gateway is full (503), which a client holding no more than its share cannot make it.
        await until('every hog upload to be held or refused, or the gateway full', async () => {
          if (answers.some((a) => /^HTTP\/1\.1 503/.test(a))) return true;
          const held = (await metric(g.port, 'conveyor_upload_bytes_in_flight')) ?? 0;
          return Math.round(held / mib) + answers.length === 10;
        });
        for (const answer of answers) {
          expect(answer).to.match(/^HTTP\/1\.1 429/);
          expect(answer).to.match(/retry-after: 2/i);
          expect(answer).to.contain('/problems/rate-limited');
        }
        expect(answers).to.have.length(6);
        expect(await metric(g.port, 'conveyor_upload_bytes_in_flight')).to.equal(4 * mib);
        // Another client is served, time after time, while the hog holds its share.
        const { body, headers } = form(await solidImage(28, 28, [9, 9, 9]));
        for (let i = 0; i < 5; i++) {
          const reply = await send(g.port, polite, { method: 'POST', path: '/v1/predict', headers, body });
          expect(reply.status, reply.text).to.equal(202);
        }
      } finally {
        for (const s of sockets) s.destroy();
      }
    });
  });

  describe('behind a proxy (TRUST_PROXY, TRUST_PROXY_HOPS)', () => {
    it('limits by the address the proxy saw: rotating forged X-Forwarded-For entries do not pass the rate limit', async () => {
      const g = await gateway({ TRUST_PROXY: 'true', RATE_LIMIT_REQUESTS: '5', RATE_LIMIT_WINDOW_SECONDS: '60' });
      const statuses: number[] = [];
      for (let i = 0; i < 20; i++) {
        // The client writes an entry of its own; the proxy appends the address it saw.
        const answer = await send(g.port, polite, {
          path: '/v1/models',
          headers: { 'x-forwarded-for': `10.0.${i}.1, 203.0.113.50` },
        });
        statuses.push(answer.status);
      }
      expect(statuses.filter((s) => s === 200)).to.have.length(5);
      expect(statuses.filter((s) => s === 429)).to.have.length(15);
      // The proxy's own client is another client: its limit is its own.
      const other = await send(g.port, polite, { path: '/v1/models', headers: { 'x-forwarded-for': '203.0.113.51' } });
      expect(other.status).to.equal(200);
    });
  });

  describe('failed authentications (AUTH_FAILURE_LIMIT)', () => {
    it('answers 429 with Retry-After to an address past its invalid keys, and not to another address', async () => {
      const g = await gateway({ API_KEYS_REQUIRED: 'true', AUTH_FAILURE_LIMIT: '5', AUTH_FAILURE_WINDOW_SECONDS: '60' });
      const statuses: number[] = [];
      let last: Answer | undefined;
      for (let i = 0; i < 12; i++) {
        last = await send(g.port, hog, {
          path: '/v1/models',
          headers: { authorization: `Bearer cvk_guess${i}_${'a'.repeat(43)}` },
        });
        statuses.push(last.status);
      }
      expect(statuses).to.deep.equal([...Array<number>(5).fill(401), ...Array<number>(7).fill(429)]);
      expect(last!.headers['content-type']).to.match(/^application\/problem\+json/);
      expect(Number(last!.headers['retry-after'])).to.be.within(1, 60);
      expect(JSON.parse(last!.text)).to.include({ type: '/problems/rate-limited', status: 429 });
      const other = await send(g.port, polite, { path: '/v1/models', headers: { authorization: 'Bearer cvk_wrong' } });
      expect(other.status).to.equal(401);
    });
  });

  describe('dashboard lockout', () => {
    const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

    it('cannot be used by a neighbour behind the same address to lock the admin out', async () => {
      const g = await gateway({ DASHBOARD_USER: 'ops-admin', DASHBOARD_PASSWORD: 'correct-horse-battery' });
      // A neighbour (same address as the admin) guessing without the admin's user name…
      const guesses: number[] = [];
      for (let i = 0; i < 15; i++) {
        const answer = await send(g.port, polite, {
          path: '/admin/queues',
          headers: { authorization: basic('admin', `guess-${i}`) },
        });
        guesses.push(answer.status);
      }
      expect(guesses.filter((s) => s === 429).length).to.be.greaterThan(0);
      // …is locked out itself, and the admin, from the same address, still gets in.
      const admin = await send(g.port, polite, {
        path: '/admin/queues/api/queues',
        headers: { authorization: basic('ops-admin', 'correct-horse-battery') },
      });
      expect(admin.status).to.equal(200);
    });
  });

  describe('shutdown with open event streams', () => {
    it('ends every stream with a reconnect hint and stops without waiting for the budget', async () => {
      const g = await gateway({ SHUTDOWN_BUDGET_MS: '30000' });
      const { body, headers } = form(await solidImage(28, 28, [9, 9, 9]));
      const queued = await send(g.port, polite, { method: 'POST', path: '/v1/predict', headers, body });
      expect(queued.status, queued.text).to.equal(202);
      const id = (JSON.parse(queued.text) as { id: string }).id;
      const streams = await Promise.all(
        Array.from(
          { length: 3 },
          () =>
            new Promise<{ text: () => string; ended: Promise<'ended' | 'cut'> }>((resolve, reject) => {
              const req = httpRequest(
                { host: '127.0.0.1', port: g.port, path: `/v1/jobs/${id}/events`, localAddress: polite, agent: false },
                (res) => {
                  let text = '';
                  res.setEncoding('utf8');
                  const ended = new Promise<'ended' | 'cut'>((done) => {
                    res.on('end', () => done('ended'));
                    res.on('error', () => done('cut'));
                    res.on('aborted', () => done('cut'));
                  });
                  res.on('data', (d: string) => (text += d));
                  resolve({ text: () => text, ended });
                },
              );
              req.on('error', reject);
              req.end();
            }),
        ),
      );
      await until('every stream to have its first event', () =>
        Promise.resolve(streams.every((s) => s.text().includes('event: state'))),
      );
      await g.service.stop();
      for (const stream of streams) {
        // Ended by the server, cleanly, after a last event telling the client to come back.
        expect(await stream.ended).to.equal('ended');
        expect(stream.text()).to.match(/retry: \d+\nevent: shutdown\ndata: /);
      }
      expect(g.records.filter((r) => r.msg === 'event streams ended for shutdown')).to.have.length(1);
      // stop() resolved by itself: the budget's forced close never ran.
      expect(g.records.map((r) => r.msg)).to.not.include('shutdown budget reached; closing the connections still open');
    });
  });

  describe('answers', () => {
    let port: number;
    before(async () => {
      port = (await gateway({})).port;
    });

    it('carry X-Content-Type-Options: nosniff, JSON and problems alike', async () => {
      const answers = await Promise.all([
        send(port, polite, { path: '/v1/models' }),
        send(port, polite, { path: '/health' }),
        send(port, polite, { path: '/no/such/route' }),
        send(port, polite, { path: '/v1/jobs/00000000-0000-4000-8000-000000000000' }),
        send(port, polite, {
          method: 'POST',
          path: '/v1/predict',
          headers: { 'content-type': 'text/plain', prefer: 'respond-async' },
          body: 'x',
        }),
      ]);
      expect(answers.map((a) => a.status)).to.deep.equal([200, 200, 404, 404, 415]);
      for (const answer of answers) expect(answer.headers['x-content-type-options']).to.equal('nosniff');
    });

    it('say that a form has too many fields (400), not that it is too large', async () => {
      const fields = Array.from({ length: 6 }, (_, i) => `--b\r\nContent-Disposition: form-data; name="f${i}"\r\n\r\nv\r\n`).join(
        '',
      );
      const answer = await send(port, polite, {
        method: 'POST',
        path: '/v1/predict',
        headers: { 'content-type': 'multipart/form-data; boundary=b', prefer: 'respond-async' },
        body: `${fields}--b--\r\n`,
      });
      expect(answer.status, answer.text).to.equal(400);
      const problem = JSON.parse(answer.text) as { type: string; detail: string };
      expect(problem.type).to.equal('/problems/invalid-request');
      expect(problem.detail).to.match(/more than 4 fields/);
      expect(problem.detail).to.not.match(/larger|options\./);
    });

    it("answer an empty file in their own words, not formidable's", async () => {
      const { body, headers } = form(Buffer.alloc(0));
      const answer = await send(port, polite, { method: 'POST', path: '/v1/predict', headers, body });
      expect(answer.status, answer.text).to.equal(400);
      const problem = JSON.parse(answer.text) as { type: string; detail: string };
      expect(problem.type).to.equal('/problems/invalid-request');
      expect(problem.detail).to.equal('The uploaded file is empty');
    });
  });
});
