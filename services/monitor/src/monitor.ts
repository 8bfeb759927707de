import { FeedbackEvent, PredictionEvent, type ModelRef } from '@conveyor/shared/contract/queue.contract';
import type { Logger } from '@conveyor/shared/logger';
import type { AlertSink } from './alerts/alert-sink.js';
import { INITIAL_STATE, step, type AlertPolicy } from './alerts/alert-state.js';
import { observe } from './drift/features.js';
import { evaluateWindow, type Level, type Thresholds, type WindowDrift } from './drift/window.js';
import type { Outcome, StreamEntry } from './store/stream-consumer.js';
import { quality, qualityLevel, type QualitySnapshot } from './quality/quality.js';
import type { ProfileSource } from './reference/profile-source.js';
import { modelKey, type MonitorStore } from './store/monitor-store.js';

/**
 * Where prediction events become drift windows and feedback becomes rolling quality, and where a
 * state change becomes an alert.
 */
export interface MonitorOptions {
  readonly windowSize: number;
  readonly minWindow: number;
  readonly thresholdsFor: (feature: string) => Thresholds;
  readonly policy: AlertPolicy;
  readonly quality: { window: number; minLabels: number; target: number; confidence: number };
  readonly predictionTtlSeconds: number;
}

export interface WindowRecord {
  model: ModelRef;
  index: number;
  evaluatedAt: string;
  size: number;
  from: string;
  to: string;
  status: 'evaluated' | 'no_reference';
  features: Record<
    string,
    { metric: string; value: number; js: number | null; level: Level; state: Level; warn: number; alert: number }
  >;
}

export class Monitor {
  readonly stats = { predictions: 0, feedback: 0, duplicates: 0, windows: 0, alerts: 0 };

  constructor(
    private readonly store: MonitorStore,
    private readonly profiles: ProfileSource,
    private readonly alerts: AlertSink,
    private readonly options: MonitorOptions,
    private readonly log: Logger,
  ) {}

  /**
   * Applies a read of the predictions stream: malformed events are skipped (acknowledged), the
   * others go to their model version's window in one script call per version. A version whose call
   * fails stays pending and is retried; the script counts each job once, so that is safe.
   */
  async handlePredictions(entries: readonly StreamEntry[]): Promise<Outcome[]> {
    const outcomes: Outcome[] = entries.map(() => 'ack');
    // Per model version: the events and the positions of their entries, in stream order.
    const groups = new Map<string, { model: ModelRef; events: PredictionEvent[]; at: number[] }>();
    for (const [i, entry] of entries.entries()) {
      const event = this.parsePrediction(entry);
      if (!event) continue;
      const mk = modelKey(event.model);
      let group = groups.get(mk);
      if (!group) groups.set(mk, (group = { model: event.model, events: [], at: [] }));
      group.events.push(event);
      group.at.push(i);
    }
    let closed = 0;
    for (const { model, events, at } of groups.values()) {
      try {
        const profile = await this.profiles.get(model);
        const items = events.map((event) => ({
          jobId: event.jobId,
          observation: observe(event, profile?.embedding),
          prediction: { label: event.prediction.label, confidence: event.prediction.confidence, model },
        }));
        const result = await this.store.appendPredictions(
          model,
          items,
          this.options.windowSize,
          this.options.predictionTtlSeconds,
        );
        this.stats.predictions += result.applied;
        this.stats.duplicates += result.duplicates;
        closed += result.closed.length;
      } catch (error) {
        this.log.warn({ err: error, model, events: events.length }, 'applying predictions failed; they stay pending');
        for (const i of at) outcomes[i] = 'retry';
      }
    }
    // The events are in their windows whatever happens here: a window left unevaluated is picked up
    // by the sweeper, so a failure must not send the batch round again.
    if (closed > 0)
      await this.evaluatePending().catch((error: unknown) => this.log.warn({ err: error }, 'window evaluation failed'));
    return outcomes;
  }

  /** The event of an entry, or undefined (logged) when it breaks the contract. */
  private parsePrediction(entry: StreamEntry): PredictionEvent | undefined {
    let raw: unknown;
    try {
      raw = JSON.parse(entry.fields.event ?? 'null');
    } catch {
      this.log.warn({ id: entry.id }, 'skipping a prediction entry that is not JSON');
      return undefined;
    }
    const parsed = PredictionEvent.safeParse(raw);
    if (parsed.success) return parsed.data;
    this.log.warn({ id: entry.id, issues: parsed.error.issues.slice(0, 3) }, 'skipping a malformed prediction event');
    return undefined;
  }

  async handleFeedback({ id, fields, deliveries }: StreamEntry): Promise<Outcome> {
    const parsed = FeedbackEvent.safeParse(JSON.parse(fields.event ?? 'null'));
    if (!parsed.success) {
      this.log.warn({ id }, 'skipping a malformed feedback event');
      return 'ack';
    }
    const feedback = parsed.data;
    const prediction = await this.store.prediction(feedback.jobId);
    if (!prediction) {
      // The prediction event may simply not be processed yet: try again later (bounded by maxDeliveries).
      this.log.debug({ jobId: feedback.jobId, deliveries }, 'feedback before its prediction; retrying later');
      return 'retry';
    }
    const added = await this.store.appendLabel(
      id,
      prediction.model,
      { correct: prediction.label === feedback.label, confidence: prediction.confidence },
      this.options.quality.window,
      this.options.predictionTtlSeconds,
    );
    if (!added) {
      this.stats.duplicates++;
      return 'ack';
    }
    this.stats.feedback++;
    await this.store.withLock(prediction.model, 30_000, () => this.judgeQuality(prediction.model));
    return 'ack';
  }

  /** Evaluates closed windows, each model version's in order, each under that version's lock. */
  async evaluatePending(): Promise<void> {
    for (const { model, index, member } of await this.store.closedWindows()) {
      await this.store.withLock(model, 30_000, async () => {
        const last = await this.store.lastEvaluated(model);
        if (index <= last) {
          await this.store.finishWindow(model, index, member, { stale: true, model, index });
          return;
        }
        if (index !== last + 1) return; // an earlier window is still being evaluated elsewhere
        const record = await this.evaluateWindow(model, index);
        await this.store.finishWindow(model, index, member, record);
        await this.store.saveLatest(model, 'drift', record);
        this.stats.windows++;
      });
    }
  }

  private async evaluateWindow(model: ModelRef, index: number): Promise<WindowRecord> {
    const observations = await this.store.closedWindow(model, index);
    const profile = await this.profiles.get(model);
    const base = { model, index, evaluatedAt: new Date().toISOString(), size: observations.length };
    if (!profile || observations.length === 0) {
      this.log.warn({ model, index }, 'window without a reference profile: drift not computed');
      const times = observations.map((o) => o.at).sort();
      return { ...base, from: times[0] ?? '', to: times.at(-1) ?? '', status: 'no_reference', features: {} };
    }
    const drift = evaluateWindow(profile, observations, this.options.thresholdsFor);
    const states = await this.applyLevels(
      model,
      Object.entries(drift.features).map(([feature, d]) => ({
        feature,
        level: d.level,
        figures: { metric: d.metric, value: d.value, threshold: d.level === 'alert' ? d.thresholds.alert : d.thresholds.warn },
      })),
      { index, drift },
    );
    const features: WindowRecord['features'] = {};
    for (const [feature, d] of Object.entries(drift.features)) {
      features[feature] = {
        metric: d.metric,
        value: d.value,
        js: d.js,
        level: d.level,
        state: states[feature]!,
        warn: d.thresholds.warn,
        alert: d.thresholds.alert,
      };
    }
    this.log.info(
      {
        model,
        window: index,
        size: drift.size,
        psi: Object.fromEntries(Object.entries(features).map(([k, f]) => [k, round(f.value)])),
      },
      'window evaluated',
    );
    return { ...base, from: drift.from, to: drift.to, status: 'evaluated', features };
  }

  private async judgeQuality(model: ModelRef): Promise<QualitySnapshot> {
    const snapshot = quality(await this.store.labels(model), this.options.quality.confidence);
    await this.store.saveLatest(model, 'quality', snapshot);
    const level = qualityLevel(snapshot, this.options.quality.target, this.options.quality.minLabels);
    if (level !== 'insufficient_data') {
      const now = new Date().toISOString();
      await this.applyLevels(
        model,
        [
          {
            feature: 'quality',
            level,
            figures: { metric: 'accuracy', value: snapshot.accuracy, threshold: this.options.quality.target },
          },
        ],
        { index: snapshot.labelled, drift: { size: snapshot.covered, from: now, to: now } },
      );
    }
    return snapshot;
  }

  /**
   * Steps each feature's state machine and announces what it says to announce. The states are read
   * and written once for all features of the window (two commands, not two per feature), and saved
   * before anything is announced, as they were when this ran feature by feature.
   */
  private async applyLevels(
    model: ModelRef,
    decisions: readonly {
      feature: string;
      level: Level;
      figures: { metric: string; value: number | null; threshold: number | null };
    }[],
    window: { index: number; drift: Pick<WindowDrift, 'size' | 'from' | 'to'> },
  ): Promise<Record<string, Level>> {
    const previous = await this.store.featureStates(model);
    const now = Date.now();
    const steps = decisions.map((d) => ({
      ...d,
      ...step(previous[d.feature] ?? INITIAL_STATE, d.level, now, this.options.policy),
    }));
    await this.store.saveFeatureStates(model, Object.fromEntries(steps.map((s) => [s.feature, s.state])));
    for (const { feature, figures, transition } of steps) {
      if (!transition?.notify) continue;
      this.stats.alerts++;
      const verb =
        transition.notify === 'resolved' ? 'is back to normal' : transition.notify === 'alert' ? 'drifted' : 'is drifting';
      await this.alerts.emit({
        severity: transition.notify,
        metric: figures.metric,
        feature,
        value: figures.value,
        threshold: figures.threshold,
        window: { index: window.index, size: window.drift.size, from: window.drift.from, to: window.drift.to },
        model,
        state: { from: transition.from, to: transition.to },
        message: `${model.name}@${model.version}: ${feature} ${verb} (${figures.metric} ${figures.value === null ? 'n/a' : round(figures.value)}${figures.threshold === null ? '' : `, threshold ${figures.threshold}`})`,
      });
    }
    return Object.fromEntries(steps.map((s) => [s.feature, s.state.level]));
  }

  /** The current state per model version and feature, for GET /drift. */
  async snapshot(): Promise<unknown> {
    const models = await this.store.models();
    return {
      at: new Date().toISOString(),
      windowSize: this.options.windowSize,
      minWindow: this.options.minWindow,
      models: await Promise.all(
        models.map(async (model) => {
          const open = await this.store.openWindow(model);
          const profile = await this.profiles.get(model);
          const states = await this.store.featureStates(model);
          const latest = (await this.store.latest(model, 'drift')) as WindowRecord | undefined;
          const current =
            open.length < this.options.minWindow
              ? { status: 'insufficient_data', size: open.length }
              : profile
                ? {
                    status: 'provisional',
                    size: open.length,
                    features: Object.fromEntries(
                      Object.entries(evaluateWindow(profile, open, this.options.thresholdsFor).features).map(([k, f]) => [
                        k,
                        { metric: f.metric, value: round(f.value), level: f.level },
                      ]),
                    ),
                  }
                : { status: 'no_reference', size: open.length };
          return {
            model,
            states: Object.fromEntries(Object.entries(states).map(([k, s]) => [k, s.level])),
            lastWindow: latest ?? null,
            currentWindow: current,
            quality: (await this.store.latest(model, 'quality')) ?? { status: 'insufficient_data' },
          };
        }),
      ),
    };
  }
}

function round(v: number): number {
  return Math.round(v * 1e4) / 1e4;
}
