import { expect } from 'chai';
import { request } from '../support/http.js';
import { randomPrefix } from '../support/redis.js';
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
    const { spawnService } = await import('../../scripts/lib/service-process.js');
    const proc = spawnService('gateway', { REDIS_URL: 'redis://127.0.0.1:1', PORT: '0', DASHBOARD_USER: 'ops' });
    expect(await proc.exited).to.equal(78);
    expect(proc.records.map((r) => r.msg).join('\n')).to.contain('set both DASHBOARD_USER and DASHBOARD_PASSWORD');
  });
});
