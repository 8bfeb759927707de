import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client';
import type { Monitor } from '../monitor.js';
import type { ProfileSource } from '../reference/profile-source.js';
import type { MonitorStore } from '../store/monitor-store.js';
import type { StreamConsumer } from '../store/stream-consumer.js';
import { currentVersions } from '../views/drift-view.js';
import { shownAgreement, type ShadowViews } from '../views/shadow-view.js';

/**
 * Prometheus gauges read from the shared state at scrape time, so every monitor instance reports
 * the same figures whichever of them evaluated the window. Per model version, labelled `model`
 * (the serving name, as the gateway's and the workers' metrics label it) and `version`.
 */
const LEVEL = { ok: 0, warn: 1, alert: 2 } as const;

export function monitorMetrics(
  store: MonitorStore,
  monitor: Monitor,
  consumers: Readonly<Record<string, StreamConsumer>> = {},
  profiles?: Pick<ProfileSource, 'stats'>,
  shadows?: Pick<ShadowViews, 'view'>,
): Registry {
  const registry = new Registry();
  // The event-loop lag histogram samples on a timer: at prom-client's default 10 ms it woke the
  // otherwise idle monitor 100 times a second, 3.5 of its 7.5 ms of CPU per idle second (measured,
  // bench/monitor-cpu.bench.ts). 100 ms still shows a stalled loop; its p99 needs no finer grain.
  collectDefaultMetrics({ register: registry, prefix: 'conveyor_monitor_', eventLoopMonitoringPrecision: 100 });
  driftGauges(registry, store);
  qualityGauges(registry, store);
  if (shadows) shadowGauges(registry, shadows);
  instanceCounters(registry, monitor, consumers, profiles);
  return registry;
}

const labelsOf = (m: { name: string; model: { version: string } }) => ({ model: m.name, version: m.model.version });

/** The drift state in Redis, per model version: values, alert levels, the window filling, the current version. */
function driftGauges(registry: Registry, store: MonitorStore): void {
  new Gauge({
    name: 'conveyor_drift_value',
    help: 'Drift of the last evaluated window (PSI, or share of drifted embedding components)',
    labelNames: ['model', 'version', 'feature', 'metric'] as const,
    registers: [registry],
    async collect() {
      this.reset();
      for (const model of await store.models()) {
        const latest = await store.latestDrift(model);
        for (const [feature, f] of Object.entries(latest?.features ?? {})) {
          this.set({ ...labelsOf(model), feature, metric: f.metric }, f.value);
        }
      }
    },
  });
  new Gauge({
    name: 'conveyor_drift_state',
    help: 'Alert state per feature: 0 OK, 1 WARN, 2 ALERT',
    labelNames: ['model', 'version', 'feature'] as const,
    registers: [registry],
    async collect() {
      this.reset();
      for (const model of await store.models()) {
        for (const [feature, s] of Object.entries(await store.featureStates(model)))
          this.set({ ...labelsOf(model), feature }, LEVEL[s.level]);
      }
    },
  });
  new Gauge({
    name: 'conveyor_drift_window_events',
    help: 'Predictions in the drift window filling now (it is evaluated when it reaches WINDOW_SIZE)',
    labelNames: ['model', 'version'] as const,
    registers: [registry],
    async collect() {
      this.reset();
      const models = await store.models();
      const sizes = await store.openWindowSizes(models);
      models.forEach((model, i) => this.set(labelsOf(model), sizes[i] ?? 0));
    },
  });
  new Gauge({
    name: 'conveyor_drift_version_current',
    help: 'Per model: 1 for the version whose predictions came last, 0 for versions it replaced (their states stay as they were)',
    labelNames: ['model', 'version'] as const,
    registers: [registry],
    async collect() {
      this.reset();
      const models = await store.models();
      const current = currentVersions(models);
      for (const tracked of models) this.set(labelsOf(tracked), current.get(tracked.name) === tracked.model.version ? 1 : 0);
    },
  });
}

/**
 * Shadow pairs (docs/shadow.md), per served model and shadow version: the agreement of the last
 * closed window (else of the filling one, once provisional), its confidence shift, and the pairs in
 * the filling window.
 */
function shadowGauges(registry: Registry, shadows: Pick<ShadowViews, 'view'>): void {
  const labels = (v: { name: string; shadow: { version: string } }) => ({ model: v.name, shadow_version: v.shadow.version });
  new Gauge({
    name: 'conveyor_shadow_agreement',
    help: 'Share of shadow pairs whose top-1 label is production’s: the last closed window of WINDOW_SIZE pairs, else the filling one once it holds MIN_WINDOW',
    labelNames: ['model', 'shadow_version'] as const,
    registers: [registry],
    async collect() {
      this.reset();
      for (const view of await shadows.view()) {
        const agreement = shownAgreement(view);
        if (agreement !== null) this.set(labels(view), agreement);
      }
    },
  });
  new Gauge({
    name: 'conveyor_shadow_confidence_shift',
    help: 'Mean |shadow’s probability of production’s label − production’s confidence| over the window conveyor_shadow_agreement reports',
    labelNames: ['model', 'shadow_version'] as const,
    registers: [registry],
    async collect() {
      this.reset();
      for (const view of await shadows.view()) {
        const window = view.lastWindow ?? (view.currentWindow.status === 'provisional' ? view.currentWindow : undefined);
        if (window?.meanConfidenceShift != null) this.set(labels(view), window.meanConfidenceShift);
      }
    },
  });
  new Gauge({
    name: 'conveyor_shadow_window_pairs',
    help: 'Shadow pairs in the window filling now (it closes at WINDOW_SIZE)',
    labelNames: ['model', 'shadow_version'] as const,
    registers: [registry],
    async collect() {
      this.reset();
      for (const view of await shadows.view()) this.set(labels(view), view.currentWindow.size);
    },
  });
}

/** Quality from labelled feedback, per model version. */
function qualityGauges(registry: Registry, store: MonitorStore): void {
  new Gauge({
    name: 'conveyor_quality_accuracy',
    help: 'Rolling accuracy of labelled predictions at the confidence threshold',
    labelNames: ['model', 'version'] as const,
    registers: [registry],
    async collect() {
      this.reset();
      for (const model of await store.models()) {
        const q = await store.latestQuality(model);
        if (q?.accuracy !== null && q?.accuracy !== undefined) this.set(labelsOf(model), q.accuracy);
      }
    },
  });
}

/** What this instance did since it started: events applied, stream entries handled, profiles refused. */
function instanceCounters(
  registry: Registry,
  monitor: Monitor,
  consumers: Readonly<Record<string, StreamConsumer>>,
  profiles: Pick<ProfileSource, 'stats'> | undefined,
): void {
  // Totals since this instance started, from the monitor's own counts at scrape time.
  let reported = { ...monitor.stats };
  const totals = (metric: Counter<'kind'>, kind: string, delta: number) => {
    if (delta > 0) metric.inc({ kind }, delta);
  };
  new Counter({
    name: 'conveyor_monitor_events_total',
    help: 'Events applied by this instance (duplicate: a redelivery it recognised and skipped), and alerts it emitted',
    labelNames: ['kind'] as const,
    registers: [registry],
    collect() {
      const now = { ...monitor.stats };
      totals(this, 'prediction', now.predictions - reported.predictions);
      totals(this, 'feedback', now.feedback - reported.feedback);
      totals(this, 'duplicate', now.duplicates - reported.duplicates);
      totals(this, 'alert', now.alerts - reported.alerts);
      reported = now;
    },
  });
  // Reclaimed: entries this instance took over from a consumer that stopped acknowledging (died).
  const consumed: Record<string, StreamConsumer['stats']> = Object.fromEntries(
    Object.keys(consumers).map((stream) => [stream, { delivered: 0, acknowledged: 0, reclaimed: 0, deadLettered: 0 }]),
  );
  new Counter({
    name: 'conveyor_monitor_stream_entries_total',
    help: 'Stream entries handled by this instance: delivered, acknowledged, reclaimed from another consumer, dead-lettered',
    labelNames: ['stream', 'kind'] as const,
    registers: [registry],
    collect() {
      for (const [stream, consumer] of Object.entries(consumers)) {
        const now = { ...consumer.stats };
        const before = consumed[stream]!;
        for (const kind of ['delivered', 'acknowledged', 'reclaimed', 'deadLettered'] as const) {
          // Zero increments too, so every series exists from the first scrape.
          this.inc({ stream, kind }, now[kind] - before[kind]);
        }
        consumed[stream] = now;
      }
    },
  });
  // A profile refused is drift never measured for that version: worth an alert of its own.
  let refusedBefore = 0;
  new Counter({
    name: 'conveyor_monitor_reference_profiles_refused_total',
    help: 'Reference profiles this instance refused: not listed, or with another SHA-256, in the version release signature (MODEL_SIGNING_PUBLIC_KEY_FILE)',
    registers: [registry],
    collect() {
      const now = profiles?.stats.refused ?? 0;
      this.inc(now - refusedBefore);
      refusedBefore = now;
    },
  });
}
