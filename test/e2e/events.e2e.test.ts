import { readFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { ConveyorClient, ConveyorProblem, type JobEvent } from '@conveyor/client';
import { ROOT } from '../../harness/service-process.js';
import { randomPrefix } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';

/**
 * GET /v1/jobs/{id}/events against a real gateway and worker: the state, then the result when a
 * worker finishes the job; the number of open streams per client is bounded, and a stream that
 * waits too long is closed.
 */
describe('job events (Server-Sent Events)', function () {
  this.timeout(90_000);
  const prefix = randomPrefix('events');
  let gateway: Gateway;
  let worker: Awaited<ReturnType<typeof startWorker>> | undefined;
  let client: ConveyorClient;
  const seven = readFileSync(path.join(ROOT, 'docs/examples/seven.png'));

  before(async () => {
    // `ghost` is known to the gateway but served by nobody: its jobs stay queued.
    gateway = await startGateway(prefix, {
      MODELS: 'digits,ghost',
      SSE_MAX_PER_CLIENT: '2',
      SSE_MAX_SECONDS: '3',
      CORS_ORIGINS: 'http://app.example',
    });
    client = new ConveyorClient({ baseUrl: gateway.url });
  });
  afterEach(function () {
    dumpLogsOnFailure(this, gateway, worker);
  });
  after(() => stopAll(gateway, worker));

  async function queued(model: string): Promise<string> {
    const outcome = await client.predict({ bytes: seven }, { model, async: true });
    if (outcome.kind !== 'accepted') throw new Error('expected a 202');
    expect(outcome.job.links.events).to.equal(`/v1/jobs/${outcome.job.id}/events`);
    return outcome.job.id;
  }

  it('sends the state while queued, then the result once a worker finishes it, then ends', async () => {
    const id = await queued('digits'); // no worker yet: it waits
    const events: JobEvent[] = [];
    let starting: Promise<unknown> | undefined;
    // A worker takes a few seconds to start, longer than a stream lasts here (SSE_MAX_SECONDS=3):
    // the client reconnects after a timeout event, as a browser's EventSource would.
    for (let stream = 0; stream < 20 && events.at(-1)?.event !== 'result'; stream++) {
      for await (const event of client.events(id)) {
        events.push(event);
        starting ??= startWorker(prefix).then((w) => (worker = w));
      }
    }
    await starting;
    expect(events[0]).to.deep.include({ event: 'state' });
    expect(events[0]!.data).to.include({ id, status: 'queued', model: 'digits' });
    const last = events.at(-1)!;
    expect(last.event).to.equal('result');
    expect(last.data).to.include({ id, status: 'completed' });
  });

  it('bounds the streams one client holds open (429 beyond), and frees a place when one closes', async () => {
    const id = await queued('ghost');
    const first = new AbortController();
    const second = new AbortController();
    const a = client.events(id, first.signal);
    const b = client.events(id, second.signal);
    expect((await a.next()).value).to.deep.include({ event: 'state' });
    expect((await b.next()).value).to.deep.include({ event: 'state' });
    const refused = await client
      .events(id)
      .next()
      .catch((e: unknown) => e);
    expect(refused).to.be.instanceOf(ConveyorProblem);
    expect((refused as ConveyorProblem).status).to.equal(429);
    second.abort();
    await b.return(undefined).catch(() => undefined);
    // The gateway notices the closed connection and gives the place back.
    const deadline = Date.now() + 10_000;
    for (;;) {
      const attempt = await client
        .events(id)
        .next()
        .then(
          (r): unknown => r.value,
          (e: unknown) => e,
        );
      if (!(attempt instanceof ConveyorProblem)) {
        expect(attempt).to.deep.include({ event: 'state' });
        break;
      }
      if (Date.now() > deadline) throw new Error('the closed stream never gave its place back');
      await new Promise((r) => setTimeout(r, 100));
    }
    first.abort();
    await a.return(undefined).catch(() => undefined);
  });

  it('closes a stream after SSE_MAX_SECONDS with a timeout event', async () => {
    const id = await queued('ghost');
    const started = performance.now();
    const events: JobEvent[] = [];
    for await (const event of client.events(id)) events.push(event);
    expect(events.map((e) => (e.event === 'other' ? e.name : e.event))).to.deep.equal(['state', 'timeout']);
    expect(events[1]!.data).to.deep.include({ detail: 'streams close after 3 s; reconnect to go on' });
    // Not before SSE_MAX_SECONDS, less a tenth for timer granularity. A lower bound cannot fail on a
    // slow machine; there is no upper bound: how soon after is not this test's matter.
    expect(performance.now() - started).to.be.at.least(2_900);
  });

  it('answers 404 for an unknown job', async () => {
    const refused = await client
      .events('00000000-0000-4000-8000-000000000000')
      .next()
      .catch((e: unknown) => e);
    expect((refused as ConveyorProblem).status).to.equal(404);
  });

  it('lets the configured origin (CORS_ORIGINS) call the API from a browser, and no other', async () => {
    const preflight = (origin: string) =>
      fetch(`${gateway.url}/v1/predict`, {
        method: 'OPTIONS',
        headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization, prefer' },
      });
    const allowed = await preflight('http://app.example');
    expect(allowed.status).to.equal(204);
    expect(allowed.headers.get('access-control-allow-origin')).to.equal('http://app.example');
    expect(allowed.headers.get('access-control-allow-headers')).to.match(/Prefer/);
    const other = await preflight('http://elsewhere.example');
    expect(other.headers.get('access-control-allow-origin')).to.equal(null);
    const models = await fetch(`${gateway.url}/v1/models`, { headers: { origin: 'http://app.example' } });
    expect(models.headers.get('access-control-expose-headers')).to.match(/Location/);
  });
});
