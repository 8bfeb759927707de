import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ROOT } from '../harness/service-process.js';
import { ensureImageSet, LOADTEST_MODELS, multipartBody, type ImageSet, type LoadtestModel } from './lib/images.js';
import { queueDepth, startSystem, waitFor, type LoadSystem } from './lib/system.js';
import { attack, ensurePython, ensureVegeta, run, writeTargets } from './lib/tools.js';

/**
 * The load tests' driver. Each mode installs what it needs on first use (the pinned venv with
 * Locust, vegeta built with Go), generates the image set, starts a whole Conveyor system of its own
 * (Redis, gateway, N workers, monitor, on free ports, from dist/: `npm run build` first, as the
 * make targets do) and checks the results against the SLO (loadtests/slo.yaml, or SLO_FILE) with
 * loadtests/check_slo.py.
 *
 *   capacity  (make loadtest)           per model, on its own route with its own images and SLO:
 *                                       vegeta at a ladder of arrival rates (digits: 1, 2 and 4
 *                                       workers; moderation: 1 and 2), each up to saturation →
 *                                       results/capacity.csv and capacity[-<model>].png, and per model
 *                                       and worker count the highest rate within the SLO (about 25 min;
 *                                       every worker serves both models, as deployed)
 *   scaleout  (make loadtest-scaleout)  a fixed rate that overloads 1 worker; 3 more are added at
 *                                       20 s while it runs; per 5 s window p95 → results/scaleout.csv;
 *                                       fails unless it breached first and the last windows are within (~1.5 min)
 *   smoke     (make loadtest-smoke)     a 40 s Locust run at a modest rate with the SLO check, the
 *                                       HTML report in results/smoke-report.html (~1 min)
 *   locust    (make loadtest-locust)    the Locust scenario in steps up to and past saturation (~4 min)
 *
 *   node --conditions=conveyor-source --import tsx loadtests/capacity.ts <mode> [options]
 *   options: --models digits,moderation  --workers 1,2,4  --rates 50,100,…,450  --moderation-workers 1,2
 *            --moderation-rates 5,10,…,100  --step-seconds 30  --warmup-seconds 10  (capacity; a run of
 *            some models keeps the other models' rows of capacity.csv)
 *            --rate 180  --duration 60  --add-at 20  --add-workers 3  --window 5  --last 3  (scaleout)
 *            --worker-concurrency n (default: the shipped 4; scaleout 1)  --out dir  --verbose
 */
const MODES = ['capacity', 'scaleout', 'smoke', 'locust'] as const;
type Mode = (typeof MODES)[number];

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    workers: { type: 'string' },
    rates: { type: 'string', default: '50,100,150,200,225,250,275,300,325,350,400,450' },
    models: { type: 'string', default: LOADTEST_MODELS.join(',') },
    'moderation-workers': { type: 'string', default: '1,2' },
    // MobileNetV2 costs ~25 ms of CPU per image (onnxruntime ~20, decode and resize ~3–5): two cores
    // can answer ~60–80 a second at most, so the ladder is finer and lower than the digits'.
    'moderation-rates': { type: 'string', default: '5,10,15,20,25,30,35,40,50,60,70,80,100' },
    'step-seconds': { type: 'string', default: '30' },
    'warmup-seconds': { type: 'string', default: '10' },
    rate: { type: 'string', default: '180' },
    duration: { type: 'string', default: '60' },
    'add-at': { type: 'string', default: '20' },
    'add-workers': { type: 'string', default: '3' },
    window: { type: 'string', default: '5' },
    last: { type: 'string', default: '3' },
    'worker-concurrency': { type: 'string' },
    out: { type: 'string', default: path.join(ROOT, 'loadtests', 'results') },
    verbose: { type: 'boolean', default: false },
  },
});
const mode = (positionals[0] ?? 'capacity') as Mode;
if (!MODES.includes(mode)) throw new Error(`unknown mode ${mode} (known: ${MODES.join(', ')})`);
const number = (name: keyof typeof values, value: string | undefined): number => {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} needs a positive number, got ${JSON.stringify(value)}`);
  return n;
};
const outDir = path.resolve(values.out);
/** Raw per-step files (vegeta's binary results and per-request CSV): large, kept out of the repository. */
const runsDir = path.join(ROOT, 'data', 'loadtests', 'runs');
mkdirSync(outDir, { recursive: true });
mkdirSync(runsDir, { recursive: true });
const checker = path.join(ROOT, 'loadtests', 'check_slo.py');

/**
 * WORKER_CONCURRENCY for the workers (unset: the shipped default, 4 jobs per process at once). The
 * scale-out run uses 1: on this 2-core machine one worker with 4 jobs in flight already decodes on
 * both cores (libvips runs on libuv threads), so a second process could add no capacity; one job at a
 * time bounds each worker by itself, as a worker with its own CPU quota is bounded in production.
 */
function workerEnv(fallback?: string): Record<string, string> {
  const concurrency = values['worker-concurrency'] ?? process.env.WORKER_CONCURRENCY ?? fallback;
  return concurrency ? { WORKER_CONCURRENCY: String(number('worker-concurrency', concurrency)) } : {};
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** The 1, 5 and 15-minute load averages, for the log beside the figures. */
const loadAverage = () =>
  os
    .loadavg()
    .map((l) => l.toFixed(1))
    .join(' ');

/** Until no job waits (the previous step's backlog is not billed to the next), then a short rest. */
async function drained(system: LoadSystem): Promise<void> {
  await waitFor('the queue to drain', async () => (await queueDepth(system.url)) === 0, 180_000);
  await sleep(2000);
}

interface Verdict {
  ok: boolean;
  measured: {
    sync: { p50: number | null; p95: number | null; p99: number | null; count: number; misses: number }[];
    ok_rps: number;
    sent_rps: number;
  };
}

interface VegetaReport {
  requests: number;
  rate: number;
  latencies: Record<'50th' | '95th' | '99th', number>;
  status_codes?: Record<string, number>;
}

const CAPACITY_HEADER =
  'model,workers,target_rps,sent_rps,ok_rps,requests,p50_ms,p95_ms,p99_ms,all_p50_ms,all_p95_ms,all_p99_ms,error_rate,wait_ran_out_202_rate,within_slo,load_avg_1m';

/**
 * The rows of an earlier capacity.csv for models this run does not measure, in today's columns (a
 * file without a model column is digits'; one without the load average gets an empty one).
 */
function keptRows(csvFile: string, measured: readonly LoadtestModel[]): string[] {
  if (!existsSync(csvFile)) return [];
  const [header = '', ...rows] = readFileSync(csvFile, 'utf8').trim().split('\n');
  const withModel = header.startsWith('model,');
  const withLoad = header.endsWith(',load_avg_1m');
  return rows
    .map((row) => `${withModel ? '' : 'digits,'}${row}${withLoad ? '' : ','}`)
    .filter((row) => !measured.includes(row.slice(0, row.indexOf(',')) as LoadtestModel));
}

async function capacity(): Promise<number> {
  const models = values.models.split(',').map((m) => m.trim()) as LoadtestModel[];
  for (const m of models)
    if (!LOADTEST_MODELS.includes(m)) throw new Error(`unknown model ${m} (known: ${LOADTEST_MODELS.join(', ')})`);
  const ladder = (model: LoadtestModel) =>
    model === 'moderation'
      ? { workers: values['moderation-workers'], rates: values['moderation-rates'] }
      : { workers: values.workers ?? '1,2,4', rates: values.rates };
  const stepSeconds = number('step-seconds', values['step-seconds']);
  const warmup = number('warmup-seconds', values['warmup-seconds']);
  const python = ensurePython();
  const vegeta = ensureVegeta();
  const set = await ensureImageSet();
  const csvFile = path.join(outDir, 'capacity.csv');
  const lines = [CAPACITY_HEADER, ...keptRows(csvFile, models)];
  const started = Date.now();
  for (const model of models) {
    const workerCounts = ladder(model)
      .workers.split(',')
      .map((w) => number('workers', w));
    const rates = ladder(model)
      .rates.split(',')
      .map((r) => number('rates', r));
    const images = set.valid.filter((i) => i.model === model).length;
    console.log(
      `\ncapacity of ${model}: ${workerCounts.join(', ')} worker(s), rates ${rates.join(', ')}/s, ${stepSeconds} s per step, until saturation` +
        ` (${images} images, weighted mix; workers: ${JSON.stringify(workerEnv()) === '{}' ? 'shipped defaults' : JSON.stringify(workerEnv())}; load average ${os
          .loadavg()
          .map((l) => l.toFixed(1))
          .join(' ')})`,
    );
    for (const workers of workerCounts) await capacityLadder(model, workers, rates);
  }
  const minutes = ((Date.now() - started) / 60_000).toFixed(1);
  console.log(`\nwrote ${path.relative(ROOT, csvFile)} (${minutes} min)`);
  // The plots, and per model and worker count the highest rate within the SLO (the checker's SLO file).
  return run(python, [path.join(ROOT, 'loadtests', 'plot_capacity.py'), csvFile, path.join(outDir, 'capacity.png')]);

  async function capacityLadder(model: LoadtestModel, workers: number, rates: number[]): Promise<void> {
    const system = await startSystem({ workers, worker: workerEnv(), verbose: values.verbose });
    try {
      const targets = writeTargets(set, system.url, path.join(runsDir, 'bodies'), model);
      // Not measured: the JIT, libvips' caches and the connection pools warm up.
      await attack(vegeta, targets, rates[0]!, warmup, path.join(runsDir, `warmup-${model}-w${workers}`));
      await drained(system);
      console.log(`\n${model}, ${workers} worker(s)`);
      console.log('  target/s  sent/s   200/s   p50       p95       p99       non-2xx  202     SLO     (1-min load average)');
      let breaches = 0;
      for (const rate of rates) {
        const prefix = path.join(runsDir, `capacity-${model}-w${workers}-r${rate}`);
        const files = await attack(vegeta, targets, rate, stepSeconds, prefix);
        const verdictFile = `${prefix}.verdict.json`;
        await run(
          python,
          [
            checker,
            'vegeta',
            files.report,
            '--results',
            files.results,
            '--target-rate',
            String(rate),
            '--model',
            model,
            '--json',
            verdictFile,
            '--quiet',
          ],
          {
            quiet: true,
          },
        );
        const verdict = JSON.parse(readFileSync(verdictFile, 'utf8')) as Verdict;
        const report = JSON.parse(readFileSync(files.report, 'utf8')) as VegetaReport;
        rmSync(files.bin, { force: true });
        const codes = report.status_codes ?? {};
        const total = Math.max(1, report.requests);
        const non2xx = Object.entries(codes)
          .filter(([code]) => !code.startsWith('2'))
          .reduce((n, [, c]) => n + c, 0);
        const waitRanOut = codes['202'] ?? 0;
        const sync = verdict.measured.sync[0]!;
        const cell = (v: number | null) => (v === null ? 'inf' : v.toFixed(1));
        const shown = (v: number | null) => (v === null ? 'miss' : `${v.toFixed(0)} ms`);
        const all = (q: '50th' | '95th' | '99th') => (report.latencies[q] / 1e6).toFixed(1);
        lines.push(
          [
            model,
            workers,
            rate,
            verdict.measured.sent_rps.toFixed(1),
            verdict.measured.ok_rps.toFixed(1),
            report.requests,
            cell(sync.p50),
            cell(sync.p95),
            cell(sync.p99),
            all('50th'),
            all('95th'),
            all('99th'),
            (non2xx / total).toFixed(4),
            (waitRanOut / total).toFixed(4),
            verdict.ok ? 'yes' : 'no',
            // The machine's 1-minute load average after the step: on a shared machine, the neighbours' share.
            os.loadavg()[0]!.toFixed(1),
          ].join(','),
        );
        writeFileSync(csvFile, `${lines.join('\n')}\n`);
        console.log(
          `  ${String(rate).padStart(8)}  ${verdict.measured.sent_rps.toFixed(1).padStart(6)}  ${verdict.measured.ok_rps.toFixed(1).padStart(6)}` +
            `  ${shown(sync.p50).padStart(8)}  ${shown(sync.p95).padStart(8)}  ${shown(sync.p99).padStart(8)}` +
            `  ${`${((non2xx / total) * 100).toFixed(1)}%`.padStart(7)}  ${`${((waitRanOut / total) * 100).toFixed(1)}%`.padStart(6)}  ${verdict.ok ? 'ok' : 'BREACH'}` +
            `  load ${os.loadavg()[0]!.toFixed(1)}`,
        );
        breaches = verdict.ok ? 0 : breaches + 1;
        // Saturated: the answers no longer keep up with the arrivals, or the tail is a miss. Two
        // breaches in a row also end the ladder (one may be a slow spell of the shared machine).
        const saturated = verdict.measured.ok_rps < 0.9 * rate || sync.p99 === null;
        if (breaches >= 2 || (breaches > 0 && saturated)) break;
        await drained(system);
      }
    } finally {
      await system.stop();
    }
  }
}

async function scaleout(): Promise<number> {
  const rate = number('rate', values.rate);
  const duration = number('duration', values.duration);
  const addAt = number('add-at', values['add-at']);
  const add = number('add-workers', values['add-workers']);
  const startWorkers = number('workers', values.workers ?? '1');
  const python = ensurePython();
  const vegeta = ensureVegeta();
  const set = await ensureImageSet();
  const env = workerEnv('1');
  const system = await startSystem({ workers: startWorkers, worker: env, verbose: values.verbose });
  let attackStart = 0;
  let added = '';
  try {
    const targets = writeTargets(set, system.url, path.join(runsDir, 'bodies'));
    await attack(
      vegeta,
      targets,
      Math.max(10, Math.round(rate / 4)),
      number('warmup-seconds', values['warmup-seconds']),
      path.join(runsDir, 'warmup-scaleout'),
    );
    await drained(system);
    console.log(
      `scale-out: ${rate}/s for ${duration} s on ${startWorkers} worker(s) (${JSON.stringify(env)}); ${add} more at ${addAt} s`,
    );
    const prefix = path.join(runsDir, 'scaleout');
    const scale = (async () => {
      await waitFor('the attack to start', () => Promise.resolve(attackStart > 0), 10_000);
      await sleep(Math.max(0, attackStart + addAt * 1000 - Date.now()));
      const asked = (Date.now() - attackStart) / 1000;
      await system.addWorkers(add);
      const ready = (Date.now() - attackStart) / 1000;
      added = `workers ${startWorkers}→${startWorkers + add}`;
      console.log(
        `  t=${asked.toFixed(1)} s: ${add} workers started; /ready lists ${system.workerCount()} at t=${ready.toFixed(1)} s`,
      );
    })();
    // Awaited after the attack; a failure to add workers must not go unhandled meanwhile.
    scale.catch(() => undefined);
    const files = await attack(vegeta, targets, rate, duration, prefix, () => (attackStart = Date.now()));
    await scale;
    rmSync(files.bin, { force: true });
    return await run(python, [
      checker,
      'windows',
      files.results,
      '--window',
      values.window,
      '--last',
      values.last,
      '--workers',
      String(startWorkers),
      '--event',
      `${addAt}=${added}`,
      '--breach-before',
      String(addAt),
      '--out',
      path.join(outDir, 'scaleout.csv'),
    ]);
  } finally {
    await system.stop();
  }
}

/** Every valid image of the set, synchronously, a few rounds, four at a time; each must answer 200. */
async function warmUp(base: string, set: ImageSet, rounds = 3): Promise<void> {
  const queue = Array.from({ length: rounds }, () => set.valid).flat();
  const one = async (): Promise<void> => {
    for (let image = queue.shift(); image; image = queue.shift()) {
      const { body, type } = multipartBody(readFileSync(path.join(set.dir, image.file)), image.file, image.contentType);
      const reply = await fetch(`${base}${image.route}`, { method: 'POST', body, headers: { 'content-type': type } });
      await reply.arrayBuffer();
      if (reply.status !== 200) throw new Error(`warm-up: ${image.name} answered ${reply.status}`);
    }
  };
  await Promise.all([one(), one(), one(), one()]);
}

/** Locust against a system of its own; then the same verdict from the files, by the stand-alone checker. */
async function locust(shape: 'smoke' | 'steps'): Promise<number> {
  const python = ensurePython();
  const set = await ensureImageSet();
  const workers = number('workers', values.workers ?? '2');
  const name = shape === 'smoke' ? 'smoke' : 'locust';
  const prefix = path.join(outDir, name);
  const html = path.join(outDir, `${name}-report.html`);
  const system = await startSystem({ workers, worker: workerEnv(), verbose: values.verbose });
  let locustCode: number;
  try {
    // Not measured, as in the capacity run: the first requests of a fresh system pay for the JIT,
    // libvips' caches and onnxruntime's first runs (a CI smoke saw p99 2.3 s from a handful of them).
    await warmUp(system.url, set);
    console.log(
      `${name}: Locust (--shape ${shape}) against ${system.url} with ${workers} worker(s) serving ${LOADTEST_MODELS.join(', ')}` +
        ` (load average ${loadAverage()})`,
    );
    const locustBin = path.join(path.dirname(python), 'locust');
    locustCode = await run(locustBin, [
      '-f',
      path.join(ROOT, 'loadtests', 'locustfile.py'),
      '--headless',
      '--host',
      system.url,
      '--shape',
      shape,
      '--csv',
      prefix,
      '--html',
      html,
      '--only-summary',
      '--loglevel',
      'WARNING',
    ]);
  } finally {
    await system.stop();
  }
  // On a shared machine the percentiles say as much about the neighbours as about Conveyor: shown beside them.
  console.log(`${name}: load average at the end ${loadAverage()} (${os.cpus().length} cores)`);
  const checkCode = await run(python, [checker, 'locust', prefix]);
  console.log(`Locust exited with ${locustCode}; the checker with ${checkCode}; report: ${path.relative(ROOT, html)}`);
  if (shape === 'smoke') {
    // The checker must catch a breach, not only pass: the same results against an impossible SLO,
    // and against one where only the moderation model's bounds are impossible (everything else is
    // generous), which only a per-model check can miss.
    const lenient =
      'async_end_to_end: {p95_ms: 1000000000}\navailability: {min_ratio_without_5xx: 0}\njobs: {max_lost: 1000000}\nbad_inputs: {max_5xx: 1000000, max_accepted: 1000000}\n';
    const selfTests = [
      {
        what: 'an impossible SLO (p95 < 1 ms)',
        slo: 'sync_predict: {p95_ms: 1, p99_ms: 1}\nasync_end_to_end: {p95_ms: 1}\navailability: {min_ratio_without_5xx: 1}\njobs: {max_lost: 0}\nbad_inputs: {max_5xx: 0}\n',
      },
      {
        what: 'an SLO impossible for the moderation model only',
        slo: `sync_predict: {p95_ms: 1000000000, p99_ms: 1000000000}\nmodels: {moderation: {sync_predict: {p95_ms: 1, p99_ms: 1}}}\n${lenient}`,
      },
    ];
    for (const [i, test] of selfTests.entries()) {
      const file = path.join(os.tmpdir(), `conveyor-impossible-slo-${process.pid}-${i}.yaml`);
      writeFileSync(file, test.slo);
      const selfTest = await run(python, [checker, 'locust', prefix, '--slo', file, '--quiet'], { quiet: true });
      rmSync(file, { force: true });
      const caught = selfTest === 1;
      console.log(`checker self-test: ${test.what} on the same results exits ${selfTest}: ${caught ? 'ok' : 'WRONG'}`);
      if (!caught) return 1;
    }
  }
  return locustCode !== 0 ? locustCode : checkCode;
}

let code: number;
switch (mode) {
  case 'capacity':
    code = await capacity();
    break;
  case 'scaleout':
    code = await scaleout();
    break;
  case 'smoke':
    code = await locust('smoke');
    break;
  case 'locust':
    code = await locust('steps');
    break;
}
process.exit(code);
