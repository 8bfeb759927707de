import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Queue, Worker, type JobsOptions } from 'bullmq';
import { Redis } from 'ioredis';
import { INFERENCE_JOB_OPTIONS } from '@conveyor/shared/contract/jobs.contract';
import { startRedis } from '../harness/redis-server.js';
import { ROOT } from '../harness/service-process.js';
import { processCpuMs } from './lib/process-cpu.js';
import { formatBreakdown, parseCommandstats, RedisCommandStats } from './lib/redis-commandstats.js';

/**
 * What BullMQ's job options cost Redis per job, one option at a time: a private redis-server, and
 * for each variant a fresh queue to which `--jobs` jobs are added (the add window: addStandardJob
 * or addPrioritizedJob), then a worker (concurrency 1, a processor that returns at once) finishes
 * them all (the finish window: moveToFinished, which also fetches the next job, and moveToActive
 * when it did not). A warm-up of `--warm` jobs first fills the completed set to its bound, as on a
 * running system. Per job: the scripts' time (their commands' included), the commands they ran and
 * those commands' own time (INFO commandstats), and redis-server's CPU from /proc; with --verbose
 * the breakdown by script and the commands inside each (the slow log, bench/lib/redis-commandstats.ts;
 * it costs Redis CPU, so compare only runs alike). Rounds interleave the variants.
 *
 *   node --conditions=conveyor-source --import tsx bench/bullmq-options.bench.ts [--jobs 2000] [--warm 300] [--rounds 2] [--verbose]
 */
const { values } = parseArgs({
  options: {
    jobs: { type: 'string', default: '2000' },
    warm: { type: 'string', default: '300' },
    rounds: { type: 'string', default: '2' },
    verbose: { type: 'boolean', default: false },
  },
});
const jobs = Number(values.jobs);
const warm = Number(values.warm);
const rounds = Number(values.rounds);

interface Variant {
  readonly name: string;
  readonly options: JobsOptions;
  /** A priority per job (as fair queuing gives: its virtual start time), or none: a standard job. */
  readonly prioritized: boolean;
  readonly eventsMaxLen?: number;
}

const current: JobsOptions = { ...INFERENCE_JOB_OPTIONS };
const variants: Variant[] = [
  { name: 'as shipped: keep {age 3600, count 100}, prioritized, events 10000', options: current, prioritized: true },
  { name: 'keep {count 100} (no age)', options: { ...current, removeOnComplete: { count: 100 } }, prioritized: true },
  { name: 'removeOnComplete: true', options: { ...current, removeOnComplete: true }, prioritized: true },
  { name: 'events maxLen 100', options: current, prioritized: true, eventsMaxLen: 100 },
  { name: 'standard job (no priority)', options: current, prioritized: false },
  {
    name: 'all three: remove, events 100, standard',
    options: { ...current, removeOnComplete: true },
    prioritized: false,
    eventsMaxLen: 100,
  },
];

const dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-bullmq-options-'));
const redis = await startRedis({ dir });
const connection = { host: '127.0.0.1', port: redis.port, maxRetriesPerRequest: null };
const stats = new RedisCommandStats(redis.url, [ROOT]);

interface Figures {
  addUs: number;
  addCommands: number;
  addCommandUs: number;
  finishUs: number;
  finishCommands: number;
  finishCommandUs: number;
  addCpuMs: number;
  finishCpuMs: number;
}

const probe = new Redis(redis.url);
/** Redis's own figures over a window: script and command µs (commandstats) and redis-server CPU. */
async function window(work: () => Promise<void>): Promise<{ us: number; commands: number; commandUs: number; cpuMs: number }> {
  const before = parseCommandstats(await probe.info('commandstats'));
  const cpu = processCpuMs(redis.pid)!;
  await work();
  const cpuMs = processCpuMs(redis.pid)! - cpu;
  const after = parseCommandstats(await probe.info('commandstats'));
  let us = 0;
  let commands = 0;
  let commandUs = 0;
  for (const [name, row] of after) {
    if (/^(config|info|slowlog|client|ping|quit)/.test(name)) continue;
    const calls = row.calls - (before.get(name)?.calls ?? 0);
    // EVALSHA's time includes the commands its scripts ran; those are counted as commands.
    if (name === 'evalsha' || name === 'eval') us += row.usec - (before.get(name)?.usec ?? 0);
    else {
      commands += calls;
      commandUs += row.usec - (before.get(name)?.usec ?? 0);
    }
  }
  return { us, commands, commandUs, cpuMs };
}

async function runOnce(variant: Variant, round: number): Promise<Figures> {
  const name = `bench-${round}-${variants.indexOf(variant)}`;
  const queue = new Queue(name, {
    connection,
    ...(variant.eventsMaxLen === undefined ? {} : { streams: { events: { maxLen: variant.eventsMaxLen } } }),
  });
  let sequence = 0;
  const add = async (n: number) => {
    for (let i = 0; i < n; i++, sequence++) {
      const priority = variant.prioritized ? 1 + Math.floor(sequence / 3) : undefined;
      await queue.add(
        'predict',
        { n: sequence },
        { ...variant.options, jobId: `j${sequence}`, ...(priority ? { priority } : {}) },
      );
    }
  };
  const finish = async (n: number) => {
    let done = 0;
    const worker = new Worker(name, () => Promise.resolve({ label: '7' }), { connection, concurrency: 1, autorun: false });
    const all = new Promise<void>((resolve) =>
      worker.on('completed', () => {
        if (++done === n) resolve();
      }),
    );
    void worker.run();
    await all;
    await worker.close();
  };
  await add(warm);
  await finish(warm);

  const verbose = values.verbose;
  if (verbose) await stats.begin();
  const added = await window(() => add(jobs));
  if (verbose) console.log(formatBreakdown(`${variant.name}: add`, await stats.end(jobs, { bench: process.pid })));
  if (verbose) await stats.begin();
  const finished = await window(() => finish(jobs));
  if (verbose) console.log(formatBreakdown(`${variant.name}: finish`, await stats.end(jobs, { bench: process.pid })));
  await queue.obliterate({ force: true });
  await queue.close();
  return {
    addUs: added.us / jobs,
    addCommands: added.commands / jobs,
    addCommandUs: added.commandUs / jobs,
    finishUs: finished.us / jobs,
    finishCommands: finished.commands / jobs,
    finishCommandUs: finished.commandUs / jobs,
    addCpuMs: added.cpuMs / jobs,
    finishCpuMs: finished.cpuMs / jobs,
  };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
try {
  const results = new Map<Variant, Figures[]>(variants.map((v) => [v, []]));
  for (let round = 0; round < rounds; round++) for (const v of variants) results.get(v)!.push(await runOnce(v, round));
  console.log(`${jobs} jobs per variant, ${warm} warm-up, medians of ${rounds} rounds; per job:`);
  console.log(
    `${'variant'.padEnd(68)} ${'script µs add'.padStart(13)} ${'add cmds'.padStart(8)} ${'(µs)'.padStart(6)} ${'script µs fin'.padStart(13)} ${'fin cmds'.padStart(8)} ${'(µs)'.padStart(6)} ${'CPU add ms'.padStart(10)} ${'CPU fin ms'.padStart(10)}`,
  );
  for (const [v, rs] of results) {
    const m = (k: keyof Figures) => median(rs.map((r) => r[k]));
    console.log(
      `${v.name.padEnd(68)} ${m('addUs').toFixed(1).padStart(13)} ${m('addCommands').toFixed(1).padStart(8)} ${m('addCommandUs').toFixed(1).padStart(6)} ${m('finishUs').toFixed(1).padStart(13)} ${m('finishCommands').toFixed(1).padStart(8)} ${m('finishCommandUs').toFixed(1).padStart(6)} ${m('addCpuMs').toFixed(3).padStart(10)} ${m('finishCpuMs').toFixed(3).padStart(10)}`,
    );
  }
} finally {
  await stats.close();
  probe.disconnect();
  await redis.stop();
  rmSync(dir, { recursive: true, force: true });
}
