import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { z } from 'zod';
import { ROOT } from '../../harness/service-process.js';

/**
 * The cost table of the docs' training page (docs/training.md, "What a run costs"): what the weekly training run costs on AWS, from figures measured in the
 * remote training run through compose (docs/evidence/remote-training-run.json, written by
 * scripts/evidence/remote-training.ts) multiplied by AWS's published list prices (below, each with
 * its source and the date it was taken as known). Nothing here is estimated but the prices.
 *
 *   node --conditions=conveyor-source --import tsx scripts/cost/cost-table.ts          # rewrite the page's table
 *   node --conditions=conveyor-source --import tsx scripts/cost/cost-table.ts --check  # exit 1 if it is out of date
 *
 * test/cost.test.ts checks that the page holds exactly what this script writes.
 */

/** A published price: value, unit, where it is published, and when it was taken as known. */
export interface Price {
  readonly usd: number;
  readonly per: string;
  readonly source: string;
  readonly asOf: string;
}

// AWS list prices, us-east-1 (N. Virginia), Linux, on-demand. Not fetched from this machine (it
// reaches no web but package registries): the values as AWS publishes them on the pages named,
// taken as known on the date given; they have been stable for years, but check the page before
// relying on them.
const AS_OF = '2026-12-01';
const EC2 = 'https://aws.amazon.com/ec2/pricing/on-demand/';
const FARGATE = 'https://aws.amazon.com/fargate/pricing/';
const S3 = 'https://aws.amazon.com/s3/pricing/';
export const PRICES = {
  't3.medium': { usd: 0.0416, per: 'hour (2 vCPU, 4 GiB)', source: EC2, asOf: AS_OF },
  'c7i.large': { usd: 0.08925, per: 'hour (2 vCPU, 4 GiB)', source: EC2, asOf: AS_OF },
  'm7i.large': { usd: 0.1008, per: 'hour (2 vCPU, 8 GiB)', source: EC2, asOf: AS_OF },
  fargateVcpu: { usd: 0.04048, per: 'vCPU-hour (Linux/x86)', source: FARGATE, asOf: AS_OF },
  fargateGb: { usd: 0.004445, per: 'GB-hour (Linux/x86)', source: FARGATE, asOf: AS_OF },
  s3Storage: { usd: 0.023, per: 'GB-month (S3 Standard, first 50 TB)', source: S3, asOf: AS_OF },
  s3PutCopyPostList: { usd: 0.005, per: '1,000 PUT, COPY, POST or LIST requests (S3 Standard)', source: S3, asOf: AS_OF },
  s3GetAndOther: { usd: 0.0004, per: '1,000 GET, SELECT and all other requests (S3 Standard)', source: S3, asOf: AS_OF },
} as const satisfies Record<string, Price>;

/** EC2 Linux and Fargate bill per second with a one-minute minimum. */
const MINIMUM_BILLED_SECONDS = 60;
const RUNS_PER_MONTH = 52 / 12; // the weekly schedule, `0 3 * * 1`
const HOURS_PER_MONTH = 730; // AWS's own convention on its pricing pages
// S3 bills binary gigabytes (2^30 bytes, AWS's S3 FAQ); sizes are shown in MiB to match.
const GB = 2 ** 30;
const MIB = 2 ** 20;
/** Months of accumulation shown in the storage table. */
const STORAGE_MONTHS = [1, 6, 12, 24] as const;
/** The retention the lifecycle scenario assumes: runs older than this are deleted (`mlflow gc`). */
export const RETENTION_DAYS = 84;

const Evidence = z.object({
  recordedAt: z.string(),
  flowRun: z.object({ name: z.string(), state: z.string().nullable(), wallSeconds: z.number() }),
  usage: z.array(z.object({ step: z.string(), wall_s: z.number(), cpu_s: z.number(), max_rss_mb: z.number() })).min(1),
  s3Requests: z.object({ total: z.number(), byClass: z.record(z.string(), z.number()) }),
  bucket: z.object({ addedVersions: z.number(), addedNoncurrentVersions: z.number(), addedBytes: z.number() }),
  mlflow: z.object({
    runs: z.array(z.object({ runId: z.string(), s3: z.object({ bytesAllVersions: z.number() }) })),
    registered: z.object({ runId: z.string().nullable().optional() }).nullable(),
  }),
});
export type Evidence = z.infer<typeof Evidence>;

const Lifecycle = z.object({
  Rules: z.array(z.object({ NoncurrentVersionExpiration: z.object({ NoncurrentDays: z.number().int().positive() }) })).min(1),
});

export const EVIDENCE_FILE = path.join(ROOT, 'docs/evidence/remote-training-run.json');
const LIFECYCLE_FILE = path.join(ROOT, 'scripts/s3/lifecycle.json');
const BEGIN = '<!-- cost-table:begin (scripts/cost/cost-table.ts writes this; do not edit by hand) -->';
const END = '<!-- cost-table:end -->';

export interface Measured {
  readonly wallSeconds: number;
  readonly cpuSeconds: number;
  readonly peakRssMb: number;
  readonly requests: { readonly putCopyPostList: number; readonly getAndOther: number; readonly free: number };
  readonly bytesPerRun: number;
  readonly bytesPerModelVersion: number;
  readonly noncurrentPerRun: number;
  readonly noncurrentDays: number;
}

export function measured(evidence: Evidence, noncurrentDays: number): Measured {
  if (evidence.flowRun.state !== 'Completed')
    throw new Error(`the recorded flow run ended ${evidence.flowRun.state}, not Completed`);
  const registered = evidence.mlflow.runs.find((r) => r.runId === evidence.mlflow.registered?.runId);
  if (!registered) throw new Error('the record names no registered run with its bucket objects');
  return {
    wallSeconds: evidence.flowRun.wallSeconds,
    cpuSeconds: evidence.usage.reduce((sum, u) => sum + u.cpu_s, 0),
    peakRssMb: Math.max(...evidence.usage.map((u) => u.max_rss_mb)),
    requests: {
      putCopyPostList: evidence.s3Requests.byClass.put_copy_post_list ?? 0,
      getAndOther: evidence.s3Requests.byClass.get_and_other ?? 0,
      free: evidence.s3Requests.byClass.delete ?? 0,
    },
    bytesPerRun: evidence.bucket.addedBytes,
    bytesPerModelVersion: registered.s3.bytesAllVersions,
    noncurrentPerRun: evidence.bucket.addedNoncurrentVersions,
    noncurrentDays,
  };
}

/** The smallest Fargate memory (GB) for 1 vCPU that holds the peak: 2–8 GB in 1 GB steps. */
function fargateMemoryGb(peakRssMb: number): number {
  return Math.max(2, Math.ceil((peakRssMb * 2 ** 20) / 2 ** 30));
}

/** Dollars with the digits that matter: cents from a dollar up, four decimals down to $0.0001, then two significant figures. */
const usd = (value: number): string =>
  value === 0
    ? '$0'
    : value >= 1
      ? `$${value.toFixed(2)}`
      : value >= 0.0001
        ? `$${value.toFixed(4)}`
        : `$${value.toPrecision(2)}`;
const link = (p: Price) => `<${p.source}>`;

export function renderCostTable(m: Measured): string {
  const billedHours = Math.max(m.wallSeconds, MINIMUM_BILLED_SECONDS) / 3600;
  const requestCost =
    (m.requests.putCopyPostList / 1000) * PRICES.s3PutCopyPostList.usd +
    (m.requests.getAndOther / 1000) * PRICES.s3GetAndOther.usd;
  const memoryGb = fargateMemoryGb(m.peakRssMb);
  const compute: [string, number, string][] = [
    [
      'EC2 t3.medium (burstable: a long run spends CPU credits), started for the run',
      billedHours * PRICES['t3.medium'].usd,
      `${PRICES['t3.medium'].usd} $/h`,
    ],
    ['EC2 c7i.large, started for the run', billedHours * PRICES['c7i.large'].usd, `${PRICES['c7i.large'].usd} $/h`],
    ['EC2 m7i.large, started for the run', billedHours * PRICES['m7i.large'].usd, `${PRICES['m7i.large'].usd} $/h`],
    [
      `ECS on Fargate, 1 vCPU + ${memoryGb} GB`,
      billedHours * (PRICES.fargateVcpu.usd + memoryGb * PRICES.fargateGb.usd),
      `${PRICES.fargateVcpu.usd} $/vCPU-h + ${PRICES.fargateGb.usd} $/GB-h`,
    ],
  ];
  const gbPerRun = m.bytesPerRun / GB;
  // Kept: every run's objects stay. Retained: runs older than RETENTION_DAYS are deleted; their
  // objects become noncurrent versions, which the rule removes NoncurrentDays later and which,
  // without it, stay (versioning keeps them) and cost as much as the kept case.
  const keptGb = (months: number) => months * RUNS_PER_MONTH * gbPerRun;
  const retainedGb = (months: number) => Math.min(keptGb(months), ((RETENTION_DAYS + m.noncurrentDays) / 7) * gbPerRun);
  const lines = [
    BEGIN,
    '',
    `Measured in the remote training run (one flow run of \`conveyor-training/weekly\`, the three configurations of \`make train\`, in the \`trainer\` container, on a shared two-core machine while other work ran: the wall time is what it took here; an idle core needs about the CPU time): **${m.wallSeconds.toFixed(0)} s** wall time, **${m.cpuSeconds.toFixed(0)} s** CPU (user + system, all trainer steps, from wait4), **${m.peakRssMb.toFixed(0)} MB** peak RSS (the largest step), **${m.requests.putCopyPostList + m.requests.getAndOther + m.requests.free}** S3 requests (${m.requests.putCopyPostList} PUT/COPY/POST/LIST, ${m.requests.getAndOther} GET and other, ${m.requests.free} DELETE), **${(m.bytesPerRun / MIB).toFixed(2)} MiB** added to the bucket (every object version; ${(m.bytesPerModelVersion / MIB).toFixed(2)} MiB of it the registered model version's run, ${m.noncurrentPerRun} noncurrent versions). Prices: AWS us-east-1 on-demand list prices as of ${AS_OF} (sources in the last table).`,
    '',
    `| Per run, compute (billed per second, 60 s minimum) + S3 requests | Compute | S3 requests | Per run | Per month (${RUNS_PER_MONTH.toFixed(2)} runs) |`,
    '| --- | --- | --- | --- | --- |',
    ...compute.map(
      ([name, cost]) =>
        `| ${name} | ${usd(cost)} | ${usd(requestCost)} | ${usd(cost + requestCost)} | ${usd((cost + requestCost) * RUNS_PER_MONTH)} |`,
    ),
    `| For contrast: a t3.medium worker left running all month | — | — | — | ${usd(HOURS_PER_MONTH * PRICES['t3.medium'].usd)} |`,
    '',
    `| Bucket storage after (weekly runs, S3 Standard) | Every version kept | Runs older than ${RETENTION_DAYS} days deleted, no lifecycle rule | Deleted, with the rule (noncurrent expire after ${m.noncurrentDays} days) | Saving per month |`,
    '| --- | --- | --- | --- | --- |',
    ...STORAGE_MONTHS.map((months) => {
      const kept = keptGb(months);
      const retained = retainedGb(months);
      const cost = (gb: number) => `${((gb * GB) / MIB).toFixed(1)} MiB, ${usd(gb * PRICES.s3Storage.usd)}/month`;
      return `| ${months} month${months === 1 ? '' : 's'} | ${cost(kept)} | ${cost(kept)} | ${cost(retained)} | ${usd((kept - retained) * PRICES.s3Storage.usd)} |`;
    }),
    '',
    '| Price | USD | Per | Source, as of |',
    '| --- | --- | --- | --- |',
    ...Object.entries(PRICES).map(([name, p]) => `| ${name} | ${p.usd} | ${p.per} | ${link(p)}, ${p.asOf} |`),
    '',
    END,
  ];
  return lines.join('\n');
}

export function readMeasured(): Measured {
  const evidence = Evidence.parse(JSON.parse(readFileSync(EVIDENCE_FILE, 'utf8')));
  const lifecycle = Lifecycle.parse(JSON.parse(readFileSync(LIFECYCLE_FILE, 'utf8')));
  return measured(evidence, lifecycle.Rules[0]!.NoncurrentVersionExpiration.NoncurrentDays);
}

/** The page that shows the cost table. */
export const COST_PAGE = 'docs/training.md';

/** The page with its cost table replaced by what the committed record gives. */
export function pageWithCostTable(page: string, table = renderCostTable(readMeasured())): string {
  const begin = page.indexOf(BEGIN);
  const end = page.indexOf(END);
  if (begin < 0 || end < begin) throw new Error(`${COST_PAGE} has no cost-table markers`);
  return page.slice(0, begin) + table + page.slice(end + END.length);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const file = path.join(ROOT, COST_PAGE);
  const page = readFileSync(file, 'utf8');
  const updated = pageWithCostTable(page);
  if (process.argv.includes('--check')) {
    if (updated !== page) {
      console.error(`${COST_PAGE}: the cost table is out of date; run scripts/cost/cost-table.ts`);
      process.exit(1);
    }
  } else if (updated !== page) {
    writeFileSync(file, updated);
    console.error(`${COST_PAGE}: cost table rewritten`);
  }
}
