import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { spawnService } from '../../harness/service-process.js';
import { request } from '../support/http.js';
import { randomPrefix, testRedisUrl } from '../support/redis.js';
import { dumpLogsOnFailure, startMonitor, stopAll } from '../support/services.js';

/**
 * The monitor's HTTP surface as an attacker on the network sees it: it listens on loopback unless
 * told otherwise, writes (POST /reports) need its bearer token, and its answers name no server paths.
 */
describe('monitor HTTP', function () {
  this.timeout(60_000);
  const token = 'monitor-token-for-the-tests';
  let reportDir: string;
  let guarded: Awaited<ReturnType<typeof startMonitor>>;
  let tokenless: Awaited<ReturnType<typeof startMonitor>>;

  before(async () => {
    reportDir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-monitor-http-'));
    [guarded, tokenless] = await Promise.all([
      startMonitor(randomPrefix('mon-http'), { MONITOR_TOKEN: token, REPORT_DIR: path.join(reportDir, 'guarded') }),
      startMonitor(randomPrefix('mon-http'), { REPORT_DIR: path.join(reportDir, 'tokenless') }, 'monitor-tokenless'),
    ]);
  });
  afterEach(function () {
    dumpLogsOnFailure(this, guarded, tokenless);
  });
  after(async () => {
    await stopAll(guarded, tokenless);
    rmSync(reportDir, { recursive: true, force: true });
  });

  it('refuses POST /reports without the bearer token, or with a wrong one (401, nothing written)', async () => {
    const offers: Record<string, string>[] = [{}, { authorization: 'Bearer not-the-token' }, { authorization: `Basic ${token}` }];
    for (const headers of offers) {
      const reply = await request(`${guarded.url}/reports`, { method: 'POST', headers });
      expect(reply.status, JSON.stringify(headers)).to.equal(401);
      expect(reply.headers.get('content-type')).to.match(/^application\/problem\+json/);
      expect(reply.headers.get('www-authenticate')).to.match(/^Bearer realm="Conveyor monitor"/);
      expect(reply.body).to.include({ type: '/problems/unauthorized', status: 401 });
    }
    expect(existsSync(path.join(reportDir, 'guarded'))).to.equal(false);
  });

  it('writes a report with the token and answers with URLs, never server paths', async () => {
    const written = await request<{ csv: string; png: string }>(`${guarded.url}/reports`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}` },
    });
    expect(written.status).to.equal(201);
    expect(JSON.stringify(written.body)).to.not.contain(reportDir);
    expect(JSON.stringify(written.body)).to.not.contain(os.tmpdir());
    expect(written.body).to.deep.equal({ csv: '/reports/drift.csv', png: '/reports/drift.png' });
    const csv = await fetch(new URL(written.body.csv, guarded.url));
    expect(csv.status).to.equal(200);
    expect((await csv.text()).split('\n')[0]).to.match(/^evaluated_at,model,version,window/);
    const png = await fetch(new URL(written.body.png, guarded.url));
    expect(
      Buffer.from(await png.arrayBuffer())
        .subarray(1, 4)
        .toString(),
    ).to.equal('PNG');
  });

  it('refuses every write when no token is configured, even from loopback (403), and still serves reads', async () => {
    const reply = await request(`${tokenless.url}/reports`, { method: 'POST', headers: { authorization: 'Bearer anything' } });
    expect(reply.status).to.equal(403);
    expect(reply.body).to.include({ type: '/problems/forbidden', status: 403 });
    expect(String(reply.body.detail)).to.contain('MONITOR_TOKEN');
    expect(existsSync(path.join(reportDir, 'tokenless'))).to.equal(false);
    expect((await request(`${tokenless.url}/drift`)).status).to.equal(200);
    expect((await request(`${tokenless.url}/health`)).status).to.equal(200);
  });

  it('listens on loopback only unless MONITOR_HOST says otherwise', async function () {
    this.timeout(180_000); // two more monitors to start, on a machine that may be loaded
    // An address of this machine other than 127.0.0.1: an outside interface, or on Linux 127.0.0.2
    // (all of 127/8 is local there, and a listener on 127.0.0.1 alone does not answer it). Never a
    // skip: without either the test fails and says why.
    const external = Object.values(os.networkInterfaces())
      .flat()
      .find((a) => a !== undefined && a.family === 'IPv4' && !a.internal)?.address;
    const other = external ?? (process.platform === 'linux' ? '127.0.0.2' : undefined);
    if (other === undefined) throw new Error('no address other than 127.0.0.1 to probe the monitor from');
    const reach = (host: string, port: number) =>
      new Promise<string>((resolve) => {
        const socket = connect({ host, port, timeout: 2000 });
        socket.on('connect', () => {
          socket.destroy();
          resolve('connected');
        });
        socket.on('timeout', () => {
          socket.destroy();
          resolve('timeout');
        });
        socket.on('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? 'error'));
      });
    const reachable = async (env: Record<string, string>) => {
      const proc = spawnService('monitor', {
        REDIS_URL: testRedisUrl(),
        REDIS_PREFIX: randomPrefix('mon-bind'),
        MONITOR_PORT: '0',
        REPORT_INTERVAL_MS: '0',
        LOG_LEVEL: 'debug',
        ...env,
      });
      try {
        const port = Number((await proc.waitFor((r) => r.msg === 'monitor listening', 120_000)).port);
        return { loopback: await reach('127.0.0.1', port), other: await reach(other, port) };
      } finally {
        await proc.stop('SIGTERM');
      }
    };
    // The probe itself can tell: told to listen everywhere, the monitor answers at that address.
    const [byDefault, everywhere] = await Promise.all([reachable({}), reachable({ MONITOR_HOST: '0.0.0.0' })]);
    expect(byDefault, `by default, probed at ${other}`).to.deep.equal({ loopback: 'connected', other: 'ECONNREFUSED' });
    expect(everywhere, 'MONITOR_HOST=0.0.0.0').to.deep.equal({ loopback: 'connected', other: 'connected' });
  });
});
