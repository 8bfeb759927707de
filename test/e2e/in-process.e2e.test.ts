import { expect } from 'chai';
import type { Redis } from 'ioredis';
import pino from 'pino';
import sharp from 'sharp';
import { loadConfig } from '@conveyor/shared/config';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { GatewayConfig } from '../../services/gateway/src/config.js';
import { startGateway, type GatewayService } from '../../services/gateway/src/gateway.service.js';
import { WorkerConfig } from '../../services/inference-worker/src/config.js';
import { startWorker, type WorkerService } from '../../services/inference-worker/src/worker.service.js';
import { digitPng, heldOutDigits } from '../support/images.js';
import { predict } from '../support/http.js';
import { randomPrefix, testRedis, testRedisUrl } from '../support/redis.js';
import { until } from '../support/wait.js';

/**
 * The services' entry points as functions: a gateway and a worker started in this very process
 * (port 0, the test Redis), the same start(config, log) their main.ts runs, then stopped the way a
 * SIGTERM stops them. No child process, so a debugger or a coverage tool sees both sides of a job.
 */
describe('gateway and worker started in-process', function () {
  this.timeout(60_000);
  const prefix = randomPrefix('in-process');
  const log = pino({ level: 'silent' });
  let gateway: GatewayService | undefined;
  let worker: WorkerService | undefined;
  let redis: Redis;

  before(async () => {
    redis = testRedis();
    // Read here, not when the file loads: the global fixture starts Redis first.
    const env = { REDIS_URL: testRedisUrl(), REDIS_PREFIX: prefix };
    worker = await startWorker(
      loadConfig(WorkerConfig, { ...env, HEARTBEAT_INTERVAL_MS: '500', SHUTDOWN_BUDGET_MS: '2000' }),
      log,
    );
    gateway = await startGateway(
      loadConfig(GatewayConfig, { ...env, PORT: '0', HOST: '127.0.0.1', SHUTDOWN_BUDGET_MS: '2000' }),
      log,
    );
    await worker.ready;
    // The gateway learns of the worker from its announcement and heartbeat, a moment after the
    // worker is ready: until then a synchronous request is refused (no-worker), as it should be.
    await until('the gateway sees a warm digits worker', async () => {
      const ready = await fetch(`http://127.0.0.1:${gateway!.port}/v2/models/digits/ready`);
      return ready.status === 200 || undefined;
    });
  });

  after(async () => {
    // Both may already be stopped by the last test: stop() is idempotent.
    await Promise.allSettled([gateway?.stop(), worker?.stop()]);
    await redis.quit();
    // A worker restricts sharp's decoders process-wide (shared/src/model/decoders.ts): in a worker's
    // own process that is the point, in this one it would break later suites that render SVG.
    sharp.unblock({ operation: ['VipsForeignLoad'] });
  });

  it('listens on the port the system chose and predicts a digit end to end', async () => {
    expect(gateway!.port).to.be.greaterThan(0);
    const { dataset, split } = await heldOutDigits();
    const index = split.test.find((i) => dataset.samples[i]!.label === 3)!;
    const reply = await predict(`http://127.0.0.1:${gateway!.port}`, await digitPng(dataset.samples[index]!.pixels));
    expect(reply.status, JSON.stringify(reply.body)).to.equal(200);
    expect(reply.body).to.deep.include({ status: 'completed' });
    expect((reply.body.prediction as { label: string }).label).to.equal('3');
    expect(reply.body.worker).to.equal(worker!.workerId);
  });

  it('stops both the way a SIGTERM would: the worker deregisters, the port closes, twice is harmless', async () => {
    const keys = redisKeys(prefix);
    expect(await redis.zscore(keys.workers, worker!.workerId)).to.not.equal(null);
    await Promise.all([worker!.stop(), gateway!.stop()]);
    await worker!.stop();
    expect(await redis.zscore(keys.workers, worker!.workerId)).to.equal(null);
    await until('the gateway port to refuse connections', async () =>
      fetch(`http://127.0.0.1:${gateway!.port}/health`).then(
        () => false,
        () => true,
      ),
    );
  });
});
