import { readFileSync } from 'node:fs';
import { expect } from 'chai';
import { digitPng, heldOutDigits } from '../support/images.js';
import { pollUntilDone, pool, predict, request } from '../support/http.js';
import { randomPrefix } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, startMonitor, startWorker, stopAll, type Gateway } from '../support/services.js';
import { until } from '../support/wait.js';

/**
 * What an on-call person reads: a real worker's Prometheus endpoint moving with real jobs, the
 * gateway's SLO histogram, and — scraped from those same processes — proof that every metric the
 * Grafana dashboard, the alert rules and the runbook name is one the code really exports.
 */
interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

interface Exposition {
  readonly samples: readonly Sample[];
  /** Metric families by `# TYPE` (histograms as their base name). */
  readonly types: ReadonlyMap<string, string>;
}

function parseExposition(text: string): Exposition {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) types.set(type[1]!, type[2]!);
    if (line.startsWith('#') || !line.trim()) continue;
    // `name{labels} value`: the value is the last field (prom-client writes no timestamps).
    const space = line.lastIndexOf(' ');
    const head = line.slice(0, space);
    const brace = head.indexOf('{');
    const name = brace < 0 ? head : head.slice(0, brace);
    if (!/^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(name) || (brace >= 0 && !head.endsWith('}')))
      throw new Error(`not Prometheus text: ${line}`);
    const labels: Record<string, string> = {};
    for (const [, key, value] of (brace < 0 ? '' : head.slice(brace + 1, -1)).matchAll(
      /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g,
    ))
      labels[key!] = value!;
    samples.push({ name, labels, value: Number(line.slice(space + 1)) });
  }
  return { samples, types };
}

/** The sum of the samples of `name` whose labels include `labels`. */
function total(exposition: Exposition, name: string, labels: Record<string, string> = {}): number {
  return exposition.samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + s.value, 0);
}

async function scrape(url: string): Promise<Exposition> {
  const reply = await request<string>(url);
  expect(reply.status, url).to.equal(200);
  return parseExposition(reply.body);
}

/** Metric and recording-rule names (conveyor_… / conveyor:…) anywhere in a PromQL-bearing text. */
function referencedNames(text: string): Set<string> {
  return new Set(Array.from(text.matchAll(/\bconveyor[_:][a-zA-Z0-9_:]*/g), (m) => m[0]));
}

interface DashboardPanel {
  type: string;
  title: string;
  datasource?: { uid?: string };
  targets?: { expr?: string; datasource?: { uid?: string } }[];
}

const WORKER_METRICS = [
  'conveyor_worker_queue_wait_seconds',
  'conveyor_worker_preprocess_seconds',
  'conveyor_worker_inference_seconds',
  'conveyor_worker_processing_seconds',
  'conveyor_worker_jobs_total',
  'conveyor_worker_jobs_in_flight',
  'conveyor_worker_concurrency',
  'conveyor_worker_model_info',
] as const;

describe('metrics: worker endpoint, SLO histogram, dashboard and alert rules', function () {
  this.timeout(90_000);
  const prefix = randomPrefix('metrics');
  let gateway: Gateway;
  let worker: Awaited<ReturnType<typeof startWorker>>;
  let monitor: Awaited<ReturnType<typeof startMonitor>>;
  let workerMetrics: string;
  let digits: Buffer[];

  before(async () => {
    [gateway, worker, monitor] = await Promise.all([
      startGateway(prefix),
      startWorker(prefix, { METRICS_PORT: '0', METRICS_HOST: '127.0.0.1', WORKER_CONCURRENCY: '2' }),
      // The drift panels and rules read the monitor's metrics.
      startMonitor(prefix),
    ]);
    const listening = await worker.waitFor((r) => r.msg === 'metrics listening');
    workerMetrics = String(listening.url);
    const { dataset, split } = await heldOutDigits();
    digits = await Promise.all(split.test.slice(0, 6).map((i) => digitPng(dataset.samples[i]!.pixels)));
  });

  afterEach(function () {
    dumpLogsOnFailure(this, gateway, worker, monitor);
  });

  after(() => stopAll(gateway, worker, monitor));

  it('serves GET /metrics on METRICS_PORT (and nothing else), with the served model and every outcome from the start', async () => {
    expect(workerMetrics).to.match(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    const reply = await fetch(workerMetrics);
    expect(reply.status).to.equal(200);
    expect(reply.headers.get('content-type')).to.match(/^text\/plain; version=0\.0\.4/);
    const base = workerMetrics.replace(/\/metrics$/, '');
    expect((await fetch(`${base}/`)).status).to.equal(404);
    expect((await fetch(`${base}/metrics`, { method: 'POST' })).status).to.equal(405);

    const metrics = parseExposition(await reply.text());
    const ready = await request<{ workers: { id: string; model: { name: string; version: string } }[] }>(`${gateway.url}/ready`);
    const served = ready.body.workers.find((w) => w.id === worker.id)!.model;
    const info = metrics.samples.filter((s) => s.name === 'conveyor_worker_model_info');
    expect(info.map((s) => ({ ...s.labels, value: s.value }))).to.deep.equal([
      { model: served.name, version: served.version, value: 1 },
    ]);
    expect(total(metrics, 'conveyor_worker_concurrency')).to.equal(2);
    for (const outcome of ['completed', 'failed_permanent', 'failed_transient', 'not_published', 'handed_back']) {
      expect(
        metrics.samples.some((s) => s.name === 'conveyor_worker_jobs_total' && s.labels.outcome === outcome),
        outcome,
      ).to.equal(true);
    }
  });

  it('times each job by stage and counts it by outcome, with no per-job labels', async () => {
    const before = await scrape(workerMetrics);
    // 4 synchronous and 2 asynchronous predictions, and a truncated PNG that only the worker's decoder
    // can refuse (the gateway reads its header and queues it): failed for good, not retried.
    await pool(digits.slice(0, 4), 2, async (png) => {
      expect((await predict(gateway.url, png)).status).to.equal(200);
    });
    for (const png of digits.slice(4)) {
      const accepted = await predict(gateway.url, png, { Prefer: 'respond-async' });
      expect(accepted.status).to.equal(202);
      expect((await pollUntilDone(gateway.url, accepted.body.id as string)).body.status).to.equal('completed');
    }
    const broken = await predict(gateway.url, digits[0]!.subarray(0, 200));
    expect(broken.status).to.equal(422);

    const delta = (after: Exposition, name: string, labels: Record<string, string> = {}) =>
      total(after, name, labels) - total(before, name, labels);
    // The reply reaches the caller just before the worker's attempt ends and is counted.
    const after = await until('the worker metrics to count all seven jobs', async () => {
      const now = await scrape(workerMetrics);
      return (
        delta(now, 'conveyor_worker_processing_seconds_count') === 7 && delta(now, 'conveyor_worker_jobs_total') === 7 && now
      );
    });
    expect(delta(after, 'conveyor_worker_jobs_total', { outcome: 'completed' })).to.equal(6);
    expect(delta(after, 'conveyor_worker_jobs_total', { outcome: 'failed_permanent' })).to.equal(1);
    for (const outcome of ['failed_transient', 'not_published', 'handed_back'])
      expect(delta(after, 'conveyor_worker_jobs_total', { outcome }), outcome).to.equal(0);
    // Every attempt waited in the queue; the broken image failed in preprocessing, so it never reached the model.
    expect(delta(after, 'conveyor_worker_queue_wait_seconds_count')).to.equal(7);
    expect(delta(after, 'conveyor_worker_preprocess_seconds_count')).to.equal(6);
    expect(delta(after, 'conveyor_worker_inference_seconds_count')).to.equal(6);
    for (const name of ['queue_wait', 'preprocess', 'inference', 'processing']) {
      const family = `conveyor_worker_${name}_seconds`;
      expect(after.types.get(family), family).to.equal('histogram');
      expect(total(after, `${family}_bucket`, { le: '+Inf' }), family).to.equal(total(after, `${family}_count`));
      expect(total(after, `${family}_bucket`, { le: '0.2' }), family).to.be.at.most(total(after, `${family}_count`));
      expect(delta(after, `${family}_sum`), family).to.be.greaterThan(0);
    }
    expect(total(after, 'conveyor_worker_jobs_in_flight')).to.equal(0);

    // Bounded cardinality: the worker's own series carry only these labels, and no id of any kind.
    const own = after.samples.filter((s) => WORKER_METRICS.some((m) => s.name.startsWith(m)));
    const labelNames = new Set(own.flatMap((s) => Object.keys(s.labels)));
    expect([...labelNames].sort()).to.deep.equal(['le', 'model', 'outcome', 'version']);
    const text = (await request<string>(workerMetrics)).body;
    expect(text).not.to.match(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/);
    expect(text).not.to.include(worker.id);

    // The gateway's SLO histogram: sync and async apart, with the 200 ms and 500 ms boundaries.
    const gatewayMetrics = await scrape(`${gateway.url}/metrics`);
    const predictRoute = { method: 'POST', route: '/v1/predict' };
    const sync = { ...predictRoute, mode: 'sync', status: '200' };
    expect(total(gatewayMetrics, 'conveyor_http_request_duration_seconds_count', sync)).to.equal(4);
    expect(
      total(gatewayMetrics, 'conveyor_http_request_duration_seconds_count', { ...predictRoute, mode: 'async', status: '202' }),
    ).to.equal(2);
    expect(
      total(gatewayMetrics, 'conveyor_http_request_duration_seconds_count', { ...predictRoute, mode: 'sync', status: '422' }),
    ).to.equal(1);
    for (const le of ['0.2', '0.5']) {
      expect(
        gatewayMetrics.samples.some((s) => s.name === 'conveyor_http_request_duration_seconds_bucket' && s.labels.le === le),
        `le=${le}`,
      ).to.equal(true);
    }
    // Other routes carry no mode label at all.
    const ready = gatewayMetrics.samples.filter(
      (s) => s.name === 'conveyor_http_request_duration_seconds_count' && s.labels.route === '/ready',
    );
    expect(ready).to.have.length.greaterThan(0);
    expect(ready.every((s) => !('mode' in s.labels))).to.equal(true);
    expect(total(gatewayMetrics, 'conveyor_workers_live')).to.equal(1);
  });

  it('exports (gateway, worker or monitor) every metric the Grafana dashboard, the alert rules and the runbook read', async () => {
    const rules = readFileSync('ops/prometheus/rules.yml', 'utf8');
    const runbook = readFileSync('docs/runbook.md', 'utf8');
    const from = runbook.indexOf('## SLO breach: which part is slow');
    expect(from, 'the runbook section').to.be.greaterThan(-1);
    const sloSection = runbook.slice(from, runbook.indexOf('\n## ', from + 1));
    const ruleTests = readFileSync('ops/prometheus/rules.test.yml', 'utf8');
    const dashboard = JSON.parse(readFileSync('ops/grafana/conveyor.json', 'utf8')) as {
      templating: { list: { name: string; type: string; query: string }[] };
      panels: DashboardPanel[];
    };

    // Grafana: a Prometheus data source variable, used by every panel and query.
    expect(dashboard.templating.list.find((v) => v.name === 'datasource')).to.include({
      type: 'datasource',
      query: 'prometheus',
    });
    const queried = dashboard.panels.filter((p) => p.type !== 'row');
    expect(queried.length).to.be.greaterThan(10);
    for (const panel of queried) {
      expect(panel.datasource?.uid, panel.title).to.equal('${datasource}');
      expect(panel.targets, panel.title).to.have.length.greaterThan(0);
      for (const target of panel.targets!) {
        expect(target.expr, panel.title).to.be.a('string');
        expect(target.datasource?.uid, panel.title).to.equal('${datasource}');
      }
    }
    const dashboardNames = referencedNames(queried.flatMap((p) => p.targets!.map((t) => t.expr!)).join('\n'));

    // What the processes export, scraped: a histogram family also exports _bucket, _sum and _count.
    const [gatewayMetrics, workerScrape, monitorScrape] = await Promise.all([
      scrape(`${gateway.url}/metrics`),
      scrape(workerMetrics),
      scrape(`${monitor.url}/metrics`),
    ]);
    const exported = new Set<string>();
    for (const { types } of [gatewayMetrics, workerScrape, monitorScrape]) {
      for (const [family, type] of types) {
        exported.add(family);
        if (type === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) exported.add(family + suffix);
      }
    }
    const recorded = new Set(Array.from(rules.matchAll(/^\s*- record: (\S+)$/gm), (m) => m[1]!));
    expect(recorded.size).to.be.greaterThan(10);

    const problems: string[] = [];
    for (const [source, names] of [
      ['ops/prometheus/rules.yml', referencedNames(rules)],
      ['ops/prometheus/rules.test.yml', referencedNames(ruleTests)],
      ['ops/grafana/conveyor.json', dashboardNames],
      ['docs/runbook.md (SLO breach)', referencedNames(sloSection)],
    ] as const) {
      for (const name of names) {
        const known = name.includes(':') ? recorded.has(name) : exported.has(name);
        if (!known) problems.push(`${source}: ${name} is ${name.includes(':') ? 'not a recording rule' : 'not exported'}`);
      }
    }
    expect(problems).to.deep.equal([]);
    // Each of the worker's stage histograms has a panel.
    for (const family of WORKER_METRICS.slice(0, 4)) expect(dashboardNames, family).to.include(`${family}_bucket`);
  });
});
