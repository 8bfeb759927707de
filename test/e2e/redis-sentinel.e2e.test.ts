import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { expect } from 'chai';
import { digitPng, heldOutDigits } from '../support/images.js';
import { request, uploadForm } from '../support/http.js';
import { command, startSentinels, type LocalSentinels } from '../support/redis-topology.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';
import { until } from '../support/wait.js';

/**
 * Losing the Redis master under load. A master, a replica and three Sentinels (quorum 2, master
 * down after 1 s) on free ports; a gateway and two workers reach them through `redis+sentinel://`.
 * Async jobs are submitted continuously; the master is killed (SIGKILL) while they are queued and
 * being worked; the Sentinels promote the replica, and the services find it by themselves (no
 * restart, no configuration change). Every job the gateway accepted (202) must complete; requests
 * made while no master is known may be refused (503 not-ready), never accepted and dropped.
 */
describe('Redis Sentinel: the master killed under load', function () {
  this.timeout(180_000);
  const prefix = `t-sentinel-${randomBytes(4).toString('hex')}`;
  let dir: string;
  let redis: LocalSentinels;
  const started: { redis?: LocalSentinels } = {};
  let gateway: Gateway;
  let workers: Awaited<ReturnType<typeof startWorker>>[] = [];
  let seven: Buffer;

  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-sentinel-'));
    redis = started.redis = await startSentinels(dir, 1000);
    // Shorter locks than the default 30 s, so a job whose lock lapsed during the failover is taken
    // over within the test's time: the mechanism is the same.
    const env = { REDIS_URL: redis.url, LOCK_DURATION_MS: '10000', STALLED_INTERVAL_MS: '5000' };
    [gateway, ...workers] = await Promise.all([
      startGateway(prefix, { REDIS_URL: redis.url }),
      startWorker(prefix, { ...env, WORKER_CONCURRENCY: '2' }, 'worker-a'),
      startWorker(prefix, { ...env, WORKER_CONCURRENCY: '2' }, 'worker-b'),
    ]);
    const { dataset, split } = await heldOutDigits();
    seven = await digitPng(dataset.samples[split.test.find((i) => dataset.samples[i]!.label === 7)!]!.pixels);
  });

  afterEach(function () {
    dumpLogsOnFailure(this, gateway, ...workers);
    if (this.currentTest?.state === 'failed' && process.env.CONVEYOR_TEST_LOG_DIR)
      for (const p of [gateway, ...workers])
        writeFileSync(
          path.join(process.env.CONVEYOR_TEST_LOG_DIR, `${p.name}.jsonl`),
          p.records.map((r) => JSON.stringify(r)).join('\n'),
        );
  });

  after(async () => {
    await stopAll(gateway, ...workers);
    await started.redis?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('fails over to the replica; the services reconnect by themselves and every accepted job completes', async () => {
    const oldMaster = redis.master.port;
    const accepted: { id: string; at: number }[] = [];
    const refused: number[] = [];
    const otherAnswers: string[] = [];
    let killedAt = 0;
    let submitting = true;

    // Eight callers, each submitting an async job as soon as its previous one was answered.
    const submitters = Array.from({ length: 8 }, async () => {
      while (submitting) {
        const at = Date.now();
        let reply;
        try {
          // Bounded: a request that never got an answer would otherwise hold the test forever.
          reply = await request(`${gateway.url}/v1/predict`, {
            method: 'POST',
            body: uploadForm(seven),
            headers: { Prefer: 'respond-async' },
            signal: AbortSignal.timeout(10_000),
          });
        } catch (error) {
          otherAnswers.push(`no answer: ${(error as Error).message}`);
          continue;
        }
        if (reply.status === 202) accepted.push({ id: reply.body.id as string, at });
        else if (reply.status === 503 && reply.body.type === '/problems/not-ready') {
          refused.push(at);
          // What a client does with Retry-After, shortened: a tight loop would only measure itself.
          await new Promise((r) => setTimeout(r, 50));
        } else otherAnswers.push(`${reply.status} ${JSON.stringify(reply.body)}`);
      }
    });

    await until('100 jobs accepted before the failover', () => Promise.resolve(accepted.length >= 100), 60_000);
    // A backlog to lose: the workers are frozen until jobs wait, and thawed the moment the master dies,
    // so the failover meets queued, active and newly submitted jobs at once.
    for (const w of workers) w.child.kill('SIGSTOP');
    let backlog: number;
    try {
      // Fair queuing gives every job a priority: they wait in BullMQ's prioritized set.
      const waiting = async () => Number(await command(oldMaster, 'ZCARD', `${prefix}:inference:prioritized`));
      await until('50 jobs waiting', async () => (await waiting()) >= 50);
      backlog = await waiting();
      killedAt = Date.now();
      await redis.master.kill();
    } finally {
      for (const w of workers) w.child.kill('SIGCONT');
    }
    const acceptedBefore = accepted.length;

    const promoted = await until(
      'the Sentinels to promote the replica',
      async () => ((await redis.currentMaster()) === redis.replica.port ? Date.now() : undefined),
      60_000,
    );
    // Recovered: the gateway accepts jobs again, and the workers complete them, on the new master.
    const gatewayBack = await until(
      'a job accepted after the failover',
      () => Promise.resolve(accepted.find((a) => a.at > promoted)?.at),
      60_000,
    );
    await until(
      '100 more jobs accepted after the failover',
      () => Promise.resolve(accepted.length >= acceptedBefore + 100),
      60_000,
    );
    submitting = false;
    await Promise.all(submitters);

    // Every accepted job is polled until it is done (503 while a gateway reconnects is retried).
    const outcomes = new Map<string, string>();
    let lastCompletion = 0;
    await until(
      `every accepted job to finish (${accepted.length})`,
      async () => {
        for (const { id } of accepted) {
          if (outcomes.has(id)) continue;
          const reply = await request(`${gateway.url}/v1/jobs/${id}`, { signal: AbortSignal.timeout(10_000) });
          if (reply.status === 200 && (reply.body.status === 'completed' || reply.body.status === 'failed')) {
            outcomes.set(id, reply.body.status);
            lastCompletion = Date.now();
          } else if (reply.status === 404) outcomes.set(id, 'lost');
        }
        return outcomes.size === accepted.length;
      },
      90_000,
    );
    const completed = [...outcomes.values()].filter((o) => o === 'completed').length;
    const lost = [...outcomes.entries()].filter(([, o]) => o === 'lost').map(([id]) => id);
    const figures = {
      jobsAccepted: accepted.length,
      acceptedBeforeKill: acceptedBefore,
      waitingWhenKilled: backlog,
      jobsCompleted: completed,
      jobsLost: lost.length,
      refusedWhileFailingOver: refused.filter((at) => at >= killedAt).length,
      promotedAfterMs: promoted - killedAt,
      gatewayAcceptingAgainAfterMs: gatewayBack - killedAt,
      allDoneAfterMs: lastCompletion - killedAt,
    };
    console.log(`      failover figures: ${JSON.stringify(figures)}`);

    expect(otherAnswers, 'only 202 or 503 not-ready').to.deep.equal([]);
    expect(lost, 'accepted jobs lost').to.deep.equal([]);
    expect(completed, 'accepted jobs completed').to.equal(accepted.length);
    // Jobs from both sides of the failover were completed, by workers that were never restarted.
    for (const w of workers) expect(w.child.exitCode, `${w.name} still running`).to.equal(null);
    const role = String(await command(redis.replica.port, 'ROLE'));
    expect(role.startsWith('master'), `the replica is the master now (${role})`).to.equal(true);
  });
});
