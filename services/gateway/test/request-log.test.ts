import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { expect } from 'chai';
import Koa from 'koa';
import { createLogger } from '@conveyor/shared/logger';
import { bindLog, type GatewayState } from '../src/http/context.js';
import type { HttpMetrics } from '../src/http/metrics.js';
import { requestContext } from '../src/http/request-context.middleware.js';

/** The raw lines a logger wrote (raw, so that a key written twice would show). */
function capture(): { stream: Writable; lines: string[] } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
      done();
    },
  });
  return { stream, lines };
}

describe("a request's logger", () => {
  const { stream, lines } = capture();
  const log = createLogger('gateway', 'debug', { stream });
  const metrics = { observe: () => undefined } as unknown as HttpMetrics;
  let server: ReturnType<Koa['listen']>;
  let url: string;

  before(async () => {
    const app = new Koa<GatewayState>();
    app.use(requestContext(log, metrics, { enabled: false, tracer: undefined as never }));
    app.use(async (ctx) => {
      const job = ctx.get('x-job');
      ctx.state.log.debug('before any id');
      bindLog(ctx.state, { apiKey: `key-${job}` });
      bindLog(ctx.state, { jobId: job });
      ctx.state.log.debug('after the ids');
      // Two requests in flight at once: each one's ids must stay its own.
      await new Promise((resolve) => setImmediate(resolve));
      ctx.body = 'ok';
    });
    server = app.listen(0);
    await new Promise((resolve) => server.once('listening', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
  });
  after(() => server.close());

  it('writes the request id, the API key and the job id once each, in that order, on every later line', async () => {
    await Promise.all(['a', 'b'].map((job) => fetch(url, { headers: { 'x-request-id': `req-${job}`, 'x-job': job } })));
    for (const job of ['a', 'b']) {
      const mine = lines.filter((l) => l.includes(`"requestId":"req-${job}"`));
      const [first, after, access] = ['before any id', 'after the ids', 'request'].map((msg) =>
        mine.find((l) => l.includes(`"msg":"${msg}"`)),
      );
      expect(first).to.match(/"pid":\d+,"requestId":"req-\w","msg":"before any id"}$/);
      for (const line of [after, access]) {
        expect(line).to.include(`,"requestId":"req-${job}","apiKey":"key-${job}","jobId":"${job}",`);
        expect(line!.split('"jobId"')).to.have.length(2);
        expect(line!.split('"apiKey"')).to.have.length(2);
      }
      expect(JSON.parse(access!)).to.include({ method: 'GET', route: 'unmatched', status: 200, jobId: job });
    }
  });

  it('leaves the service logger as it was', () => {
    log.info('a line of the service');
    const line = lines.at(-1)!;
    expect(line).to.not.include('requestId');
    expect(line).to.not.include('jobId');
  });
});
