import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { ConveyorClient, ConveyorProblem } from '@conveyor/client';
import { ROOT } from '../../harness/service-process.js';
import { randomPrefix } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';
import { startUrlServer, type UrlServer } from '../support/url-server.js';
import { until } from '../support/wait.js';

const run = promisify(execFile);

/** `conveyor predict …` as a user runs it: the CLI from source, against the gateway under test. */
export async function conveyorCli(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(
      process.execPath,
      ['--conditions=conveyor-source', '--import', 'tsx', path.join(ROOT, 'clients/typescript/src/cli.ts'), ...args],
      { cwd: ROOT, env: { ...process.env, ...env } },
    );
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

/** The typed client and the `conveyor` command against a real gateway and worker. */
describe('TypeScript client and the conveyor CLI', function () {
  this.timeout(90_000);
  const prefix = randomPrefix('client');
  let gateway: Gateway;
  let worker: Awaited<ReturnType<typeof startWorker>>;
  let images: UrlServer;
  let client: ConveyorClient;
  const seven = readFileSync(path.join(ROOT, 'docs/examples/seven.png'));

  before(async () => {
    images = await startUrlServer({ '/seven.png': { type: 'image/png', body: seven } });
    [gateway, worker] = await Promise.all([startGateway(prefix, { URL_ALLOW_CIDRS: '127.0.0.1/32' }), startWorker(prefix)]);
    client = new ConveyorClient({ baseUrl: gateway.url });
    await until('digits ready', () => client.ready('digits'));
  });
  afterEach(function () {
    dumpLogsOnFailure(this, gateway, worker);
  });
  after(async () => {
    await stopAll(gateway, worker);
    await images.close();
  });

  it('predicts from bytes and from a URL, synchronously, with typed results', async () => {
    const outcome = await client.predict({ bytes: seven, filename: 'seven.png' });
    expect(outcome.kind).to.equal('completed');
    if (outcome.kind !== 'completed') return;
    expect(outcome.result.prediction.label).to.equal('7');
    expect(outcome.result.model.name).to.equal('digits');

    const byUrl = await client.predict({ url: images.url('/seven.png') }, { model: 'digits' });
    expect(byUrl.kind === 'completed' && byUrl.result.prediction.label).to.equal('7');
  });

  it('queues asynchronously and waits for the job by polling', async () => {
    const outcome = await client.predict({ bytes: seven }, { async: true });
    expect(outcome.kind).to.equal('accepted');
    if (outcome.kind !== 'accepted') return;
    const done = await client.waitForJob(outcome.job.id);
    expect(done.status).to.equal('completed');
    expect(done.status === 'completed' && done.prediction.label).to.equal('7');
  });

  it('throws problems as ConveyorProblem, and lists models', async () => {
    const refused = await client.predict({ bytes: Buffer.from('not an image at all') }).catch((e: unknown) => e);
    expect(refused).to.be.instanceOf(ConveyorProblem);
    expect((refused as ConveyorProblem).status).to.equal(415);
    expect((refused as ConveyorProblem).problem.type).to.equal('/problems/unsupported-media-type');
    const unknown = await client.predict({ bytes: seven }, { model: 'nope' }).catch((e: unknown) => e);
    expect((unknown as ConveyorProblem).status).to.equal(404);
    const { models } = await client.models();
    expect(models.map((m) => m.name)).to.include('digits');
  });

  it('conveyor predict <file> prints the result; --async the job; a bad file the problem (exit 1)', async () => {
    const env = { CONVEYOR_URL: gateway.url };
    const sync = await conveyorCli(['predict', 'docs/examples/seven.png'], env);
    expect(sync.code, sync.stderr).to.equal(0);
    expect((JSON.parse(sync.stdout) as { prediction: { label: string } }).prediction.label).to.equal('7');

    const queued = await conveyorCli(['predict', 'docs/examples/seven.png', '--async', '--model', 'digits'], env);
    expect(queued.code, queued.stderr).to.equal(0);
    const job = JSON.parse(queued.stdout) as { id: string; status: string };
    expect(job.status).to.equal('queued');
    const polled = await conveyorCli(['job', job.id, '--wait-done'], env);
    expect((JSON.parse(polled.stdout) as { status: string }).status).to.equal('completed');

    const byUrl = await conveyorCli(['predict', images.url('/seven.png')], env);
    expect((JSON.parse(byUrl.stdout) as { prediction: { label: string } }).prediction.label).to.equal('7');

    const bad = await conveyorCli(['predict', 'README.md'], env);
    expect(bad.code).to.equal(1);
    expect((JSON.parse(bad.stderr) as { title: string }).title).to.equal('The content is not a supported image type');

    const usage = await conveyorCli(['predict'], env);
    expect(usage.code).to.equal(2);
    expect(usage.stderr).to.match(/usage: conveyor predict/);
  });
});
