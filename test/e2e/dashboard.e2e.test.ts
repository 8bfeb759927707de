import { Queue } from 'bullmq';
import { expect } from 'chai';
import { QUEUES } from '@conveyor/shared/contract/jobs.contract';
import { request } from '../support/http.js';
import { randomPrefix, testRedisUrl } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, stopAll, type Gateway } from '../support/services.js';

/** The queue dashboard: off by default, behind Basic auth when configured, showing the inference queue. */
describe('queue dashboard', function () {
  this.timeout(60_000);
  const prefix = randomPrefix('dash');
  let open: Gateway;
  let guarded: Gateway;
  const auth = { authorization: `Basic ${Buffer.from('ops:correct-horse-battery').toString('base64')}` };

  before(async () => {
    [open, guarded] = await Promise.all([
      startGateway(prefix),
      startGateway(prefix, { DASHBOARD_USER: 'ops', DASHBOARD_PASSWORD: 'correct-horse-battery' }),
    ]);
  });
  afterEach(function () {
    dumpLogsOnFailure(this, open, guarded);
  });
  after(() => stopAll(open, guarded));

  it('is not mounted without credentials', async () => {
    expect((await request(`${open.url}/admin/queues`)).status).to.equal(404);
  });

  it('asks for credentials, and refuses wrong ones', async () => {
    const anonymous = await request(`${guarded.url}/admin/queues`);
    expect(anonymous.status).to.equal(401);
    expect(anonymous.headers.get('www-authenticate')).to.match(/^Basic realm="Conveyor dashboard"/);
    expect(anonymous.headers.get('content-type')).to.match(/problem\+json/);
    const wrong = await request(`${guarded.url}/admin/queues`, {
      headers: { authorization: `Basic ${Buffer.from('ops:nope').toString('base64')}` },
    });
    expect(wrong.status).to.equal(401);
  });

  it('serves the board and lists the inference queue', async () => {
    const page = await fetch(`${guarded.url}/admin/queues`, { headers: auth });
    expect(page.status).to.equal(200);
    expect(await page.text()).to.contain('<html');
    const api = await request<{ queues: { name: string }[] }>(`${guarded.url}/admin/queues/api/queues`, { headers: auth });
    expect(api.status).to.equal(200);
    expect(api.body.queues.map((q) => q.name)).to.include('inference');
  });

  it('refuses half a configuration at start-up', async () => {
    const { spawnService } = await import('../../harness/service-process.js');
    const proc = spawnService('gateway', { REDIS_URL: 'redis://127.0.0.1:1', PORT: '0', DASHBOARD_USER: 'ops' });
    expect(await proc.exited).to.equal(78);
    expect(proc.records.map((r) => r.msg).join('\n')).to.contain('set both DASHBOARD_USER and DASHBOARD_PASSWORD');
  });
});

/**
 * The dashboard's defences: a lockout after repeated wrong passwords, no state change from another
 * site (Origin/Referer check, no form or text bodies), and headers that forbid framing.
 */
describe('queue dashboard defences', function () {
  this.timeout(60_000);
  const prefix = randomPrefix('dash-guard');
  const user = 'ops';
  const password = 'correct-horse-battery';
  const basic = (u: string, p: string) => `Basic ${Buffer.from(`${u}:${p}`).toString('base64')}`;
  const auth = { authorization: basic(user, password) };
  // Behind a proxy (TRUST_PROXY), so each test can be a client of its own (X-Forwarded-For).
  let gateway: Gateway;
  let queue: Queue;
  const addPath = '/admin/queues/api/queues/inference/add';

  before(async () => {
    gateway = await startGateway(prefix, { DASHBOARD_USER: user, DASHBOARD_PASSWORD: password, TRUST_PROXY: 'true' });
    queue = new Queue(QUEUES.inference, { connection: { url: testRedisUrl() }, prefix });
  });
  afterEach(function () {
    dumpLogsOnFailure(this, gateway);
  });
  after(async () => {
    await queue.close();
    await stopAll(gateway);
  });

  const jobNames = async () => (await queue.getJobs(['waiting', 'delayed', 'prioritized'])).map((j) => j.name);

  describe('failed logins', () => {
    it('answers 429 with Retry-After after 10 wrong passwords in a minute, even to the right one, and only for that client', async () => {
      const attacker = { 'x-forwarded-for': '203.0.113.7' };
      const statuses: number[] = [];
      for (let i = 0; i < 10; i++) {
        const reply = await request(`${gateway.url}/admin/queues`, {
          headers: { ...attacker, authorization: basic(user, `guess-number-${i}`) },
        });
        statuses.push(reply.status);
      }
      expect(statuses).to.deep.equal(Array<number>(10).fill(401));
      const locked = await request(`${gateway.url}/admin/queues`, { headers: { ...attacker, ...auth } });
      expect(locked.status).to.equal(429);
      const retryAfter = Number(locked.headers.get('retry-after'));
      expect(retryAfter).to.be.within(1, 15 * 60);
      expect(locked.headers.get('content-type')).to.match(/^application\/problem\+json/);
      expect(locked.body).to.include({ type: '/problems/rate-limited', status: 429 });
      expect(locked.body.requestId).to.equal(locked.headers.get('x-request-id'));
      // Another client is not locked out.
      const other = await request(`${gateway.url}/admin/queues/api/queues`, {
        headers: { 'x-forwarded-for': '203.0.113.8', ...auth },
      });
      expect(other.status).to.equal(200);
    });

    it('cannot be outrun by concurrent guesses, nor by a forged X-Forwarded-For in front of the proxy', async () => {
      // The proxy appends the address it saw; what the client wrote before it is not trusted.
      const replies = await Promise.all(
        Array.from({ length: 30 }, (_, i) =>
          request(`${gateway.url}/admin/queues`, {
            headers: { 'x-forwarded-for': `10.9.${i}.1, 203.0.113.9`, authorization: basic(user, `parallel-guess-${i}`) },
          }),
        ),
      );
      const counts = replies.reduce<Record<number, number>>((c, r) => ({ ...c, [r.status]: (c[r.status] ?? 0) + 1 }), {});
      expect(counts).to.deep.equal({ 401: 10, 429: 20 });
    });
  });

  describe('cross-site requests', () => {
    const client = { 'x-forwarded-for': '198.51.100.20' };

    it('refuses a cross-site form POST with cached credentials (403, no job added)', async () => {
      const reply = await request(`${gateway.url}${addPath}`, {
        method: 'POST',
        headers: {
          ...client,
          ...auth,
          origin: 'https://evil.example',
          'content-type': 'application/x-www-form-urlencoded',
        },
        body: 'name=csrf-form&data=%7B%7D',
      });
      expect(reply.status).to.equal(403);
      expect(reply.headers.get('content-type')).to.match(/^application\/problem\+json/);
      expect(reply.body).to.include({ type: '/problems/forbidden', status: 403 });
      expect(reply.body.requestId).to.equal(reply.headers.get('x-request-id'));
      expect(await jobNames()).to.not.include('csrf-form');
    });

    it('refuses a write whose Origin or Referer is another site, or that carries neither', async () => {
      const json = { ...client, ...auth, 'content-type': 'application/json' };
      const foreign = await request(`${gateway.url}${addPath}`, {
        method: 'POST',
        headers: { ...json, referer: 'https://evil.example/page.html' },
        body: JSON.stringify({ name: 'csrf-referer', data: {} }),
      });
      expect(foreign.status).to.equal(403);
      const foreignOrigin = await request(`${gateway.url}${addPath}`, {
        method: 'POST',
        headers: { ...json, origin: 'https://evil.example', referer: `${gateway.url}/admin/queues` },
        body: JSON.stringify({ name: 'csrf-origin', data: {} }),
      });
      expect(foreignOrigin.status).to.equal(403);
      const anonymous = await request(`${gateway.url}${addPath}`, {
        method: 'POST',
        headers: json,
        body: JSON.stringify({ name: 'csrf-none', data: {} }),
      });
      expect(anonymous.status).to.equal(403);
      const obliterate = await request(`${gateway.url}/admin/queues/api/queues/inference/obliterate`, {
        method: 'PUT',
        headers: { ...client, ...auth, origin: 'null' },
      });
      expect(obliterate.status).to.equal(403);
      const names = await jobNames();
      for (const name of ['csrf-referer', 'csrf-origin', 'csrf-none']) expect(names).to.not.include(name);
    });

    it('refuses form and text bodies even from its own origin', async () => {
      for (const type of ['application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'text/plain;charset=UTF-8']) {
        const reply = await request(`${gateway.url}${addPath}`, {
          method: 'POST',
          headers: { ...client, ...auth, origin: gateway.url, 'content-type': type },
          body: type.startsWith('multipart') ? '--x--\r\n' : '{"name":"csrf-simple","data":{}}',
        });
        expect(reply.status, type).to.equal(403);
      }
      expect(await jobNames()).to.not.include('csrf-simple');
    });

    it("still takes the board's own writes: JSON or no body, from its Origin or with its Referer", async () => {
      const json = { ...client, ...auth, 'content-type': 'application/json' };
      const byOrigin = await request(`${gateway.url}${addPath}`, {
        method: 'POST',
        headers: { ...json, origin: gateway.url },
        body: JSON.stringify({ name: 'from-the-board', data: {} }),
      });
      expect(byOrigin.status).to.equal(200);
      const byReferer = await request(`${gateway.url}${addPath}`, {
        method: 'POST',
        headers: { ...json, referer: `${gateway.url}/admin/queues/queue/inference` },
        body: JSON.stringify({ name: 'from-the-board-too', data: {} }),
      });
      expect(byReferer.status).to.equal(200);
      expect(await jobNames()).to.include.members(['from-the-board', 'from-the-board-too']);
      // Its buttons (pause, resume, clean, …) send no body at all.
      for (const action of ['pause', 'resume']) {
        const reply = await request(`${gateway.url}/admin/queues/api/queues/inference/${action}`, {
          method: 'PUT',
          headers: { ...client, ...auth, origin: gateway.url },
        });
        expect(reply.status, action).to.equal(200);
      }
      expect(await queue.isPaused()).to.equal(false);
      await queue.drain();
    });
  });

  describe('framing and sniffing', () => {
    const client = { 'x-forwarded-for': '198.51.100.30' };

    const expectHeaders = (headers: Headers) => {
      expect(headers.get('x-frame-options')).to.equal('DENY');
      expect(headers.get('content-security-policy')).to.contain("frame-ancestors 'none'");
      expect(headers.get('x-content-type-options')).to.equal('nosniff');
      expect(headers.get('referrer-policy')).to.equal('same-origin');
    };

    it('forbids framing on every dashboard answer (page, API, refusals)', async () => {
      const page = await request(`${gateway.url}/admin/queues`, { headers: { ...client, ...auth } });
      expect(page.status).to.equal(200);
      expectHeaders(page.headers);
      const api = await request(`${gateway.url}/admin/queues/api/queues`, { headers: { ...client, ...auth } });
      expectHeaders(api.headers);
      const anonymous = await request(`${gateway.url}/admin/queues`, { headers: client });
      expect(anonymous.status).to.equal(401);
      expectHeaders(anonymous.headers);
    });

    it('serves a UI its Content-Security-Policy lets run: every script and stylesheet it links loads, with its type', async () => {
      const page = await fetch(`${gateway.url}/admin/queues`, { headers: { ...client, ...auth } });
      const html = await page.text();
      const csp = Object.fromEntries(
        page.headers
          .get('content-security-policy')!
          .split(';')
          .map((d) => d.trim().split(/\s+/))
          .map(([name, ...sources]) => [name!, sources]),
      );
      const allows = (directive: string, source: string) =>
        (csp[directive] ?? csp['default-src'] ?? []).some((s) => s === source);
      const base = new URL(/<base href="([^"]+)"/.exec(html)![1]!, gateway.url);
      const scripts = [...html.matchAll(/<script\b([^>]*)>/g)].map((m) => m[1]!);
      // Executable scripts are all files of the dashboard's own origin; the one inline block is data.
      for (const attributes of scripts) {
        if (/type="application\/json"/.test(attributes)) continue;
        const src = /src="([^"]+)"/.exec(attributes)?.[1];
        expect(src, `inline script ${attributes}`).to.be.a('string');
        expect(new URL(src!, base).origin).to.equal(gateway.url);
      }
      expect(allows('script-src', "'self'")).to.equal(true);
      // Inline style attributes and a <style> block in the page, fonts from Google Fonts.
      expect(allows('style-src', "'unsafe-inline'")).to.equal(true);
      expect(allows('style-src', 'https://fonts.googleapis.com')).to.equal(true);
      expect(allows('font-src', 'https://fonts.gstatic.com')).to.equal(true);
      const assets = [
        ...scripts.flatMap((a) => /src="([^"]+)"/.exec(a)?.[1] ?? []).map((src) => ({ src, type: /javascript/ })),
        ...[...html.matchAll(/<link href="(static\/[^"]+\.css)" rel="stylesheet">/g)].map((m) => ({
          src: m[1]!,
          type: /text\/css/,
        })),
      ];
      expect(assets.length).to.be.greaterThan(2);
      for (const { src, type } of assets) {
        const asset = await fetch(new URL(src, base), { headers: { ...client, ...auth } });
        expect(asset.status, src).to.equal(200);
        // With nosniff a browser runs a script only when it is served as JavaScript.
        expect(asset.headers.get('content-type'), src).to.match(type);
        await asset.arrayBuffer();
      }
    });
  });
});
