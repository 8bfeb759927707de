import { spawn } from 'node:child_process';
import path from 'node:path';
import { expect } from 'chai';
import { ROOT } from '../../harness/service-process.js';
import { randomPrefix } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';

/**
 * The Python client (clients/python) passes its own pytest suite against a real gateway and worker:
 * sync and async predict with a file and a URL, polling, Server-Sent Events, problems as exceptions.
 * pytest runs in the pinned venv of harness/venv.sh api-tests (installed on first use).
 */
describe('Python client (clients/python) against a real system', function () {
  this.timeout(600_000);
  const prefix = randomPrefix('pyclient');
  let gateway: Gateway;
  let worker: Awaited<ReturnType<typeof startWorker>>;

  before(async () => {
    // The images the tests name by URL are served by pytest itself on 127.0.0.1.
    [gateway, worker] = await Promise.all([startGateway(prefix, { URL_ALLOW_CIDRS: '127.0.0.1/32' }), startWorker(prefix)]);
  });
  afterEach(function () {
    dumpLogsOnFailure(this, gateway, worker);
  });
  after(() => stopAll(gateway, worker));

  it('passes its pytest suite', async () => {
    const child = spawn('bash', [path.join(ROOT, 'scripts/api/python-client-test.sh'), '-q'], {
      cwd: ROOT,
      env: { ...process.env, CONVEYOR_URL: gateway.url },
    });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    if (code !== 0) console.log(output);
    expect(code, 'pytest exit code').to.equal(0);
    expect(output).to.match(/\d+ passed/);
    expect(output).not.to.match(/\d+ (failed|errors?|skipped)/);
  });
});
