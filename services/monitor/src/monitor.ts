import { servingName, type ModelRef } from '@conveyor/shared/contract/common.contract';
import type { Logger } from '@conveyor/shared/logger';
import type { AlertPolicy } from './alerts/alert-state.js';
import type { AlertSink } from './alerts/alert-sink.js';
import { round } from './alerts/alert-wording.js';
import { Announcer, driftDecisions } from './alerts/announcer.js';
import { observe } from './drift/features.js';
import { evaluateWindow, type Thresholds } from './drift/window.js';
import { evaluatedRecord, learningRecord, unreferencedRecord } from './drift/window-record.js';
import { byModelVersion, parseFeedback } from './events/stream-events.js';
import { quality, qualityLevel } from './quality/quality.js';
import type { References } from './reference/learned-reference.js';
import type { MonitorStore } from './store/monitor-store.js';
import type { TrackedModel, WindowRecord } from './store/store-records.js';
import type { Outcome, StreamEntry } from './store/stream-consumer.js';

/**
 * Where prediction events become drift windows and feedback becomes rolling quality, each per model
 * version (serving name and version: one model's traffic never enters another's window, and a new
 * version starts windows of its own). What the records hold is in store-records.ts, what alerts say
 * in alerts/, what GET /drift shows in views/.
 */
export interface MonitorOptions {
  readonly windowSize: number;
  readonly minWindow: number;
  readonly thresholdsFor: (feature: string) => Thresholds;
  readonly policy: AlertPolicy;
  readonly quality: { window: number; minLabels: number; target: number; confidence: number };
  readonly predictionTtlSeconds: number;
}

/** A model version's lock is held this long at most (a monitor that died holding it loses it). */
const LOCK_MS = 30_000;

export class Monitor {
  private readonly counts = { predictions: 0, feedback: 0, duplicates: 0, windows: 0 };
  private readonly announcer: Announcer;

  constructor(
    private readonly store: MonitorStore,
    private readonly profiles: References,
    alerts: AlertSink,
    private readonly options: MonitorOptions,
    private readonly log: Logger,
  ) {
    this.announcer = new Announcer(store, alerts, options.policy);
  }

  /** What this instance applied since it started (the metrics count from these). */
  get stats(): { predictions: number; feedback: number; duplicates: number; windows: number; alerts: number } {
    return { ...this.counts, alerts: this.announcer.announced };
  }

  /**
   * Applies a read of the predictions stream: malformed events are skipped (acknowledged), the
   * others go to their model version's window in one script call per version. A version whose call
   * fails stays pending and is retried; the script counts each job once, so that is safe.
   */
  async handlePredictions(entries: readonly StreamEntry[]): Promise<Outcome[]> {
    const outcomes: Outcome[] = entries.map(() => 'ack');
    let closed = 0;
    for (const { model: tracked, events, at } of byModelVersion(entries, this.log)) {
      try {
        const profile = await this.profiles.get(tracked);
        const items = events.map((event) => ({
          jobId: event.jobId,
          observation: observe(event, profile?.embedding),
          prediction: {
            label: event.prediction.label,
            confidence: event.prediction.confidence,
            model: tracked.model,
            name: tracked.name,
          },
        }));
        const result = await this.store.appendPredictions(
          tracked,
          items,
          this.options.windowSize,
          this.options.predictionTtlSeconds,
        );
        this.counts.predictions += result.applied;
        this.counts.duplicates += result.duplicates;
        closed += result.closed.length;
      } catch (error) {
        this.log.warn({ err: error, model: tracked, events: events.length }, 'applying predictions failed; they stay pending');
        for (const i of at) outcomes[i] = 'retry';
      }
    }
    // The events are in their windows whatever happens here: a window left unevaluated is picked up
    // by the sweeper, so a failure must not send the batch round again.
    if (closed > 0)
      await this.evaluatePending().catch((error: unknown) => this.log.warn({ err: error }, 'window evaluation failed'));
    return outcomes;
  }

  async handleFeedback(entry: StreamEntry): Promise<Outcome> {
    const feedback = parseFeedback(entry, this.log);
    if (!feedback) return 'ack';
    // The record kept of the prediction (for PREDICTION_TTL_SECONDS) names the model exactly; after
    // that, the prediction the gateway put in the feedback event (any feedback within the result's
    // lifetime) is joined to the serving name that counted that model version.
    const stored = await this.store.prediction(feedback.jobId);
    const prediction = stored ?? feedback.predicted;
    if (!prediction) {
      // The prediction event may simply not be processed yet: try again later (bounded by maxDeliveries).
      this.log.debug({ jobId: feedback.jobId, deliveries: entry.deliveries }, 'feedback before its prediction; retrying later');
      return 'retry';
    }
    // A prediction stored by a monitor of the release before several models has no serving name.
    const tracked: TrackedModel = {
      name: stored ? servingName(stored) : await this.servingNameOf(prediction.model),
      model: prediction.model,
    };
    const added = await this.store.appendLabel(
      entry.id,
      tracked,
      { correct: prediction.label === feedback.label, confidence: prediction.confidence },
      this.options.quality.window,
      this.options.predictionTtlSeconds,
    );
    if (!added) {
      this.counts.duplicates++;
      return 'ack';
    }
    this.counts.feedback++;
    await this.store.withLock(tracked, LOCK_MS, () => this.judgeQuality(tracked));
    return 'ack';
  }

  /** The serving name under which a model version's predictions were counted (its own name if none was). */
  private async servingNameOf(ref: ModelRef): Promise<string> {
    const tracked = (await this.store.models()).find((m) => m.model.name === ref.name && m.model.version === ref.version);
    return tracked?.name ?? ref.name;
  }

  /** Evaluates closed windows, each model version's in order, each under that version's lock. */
  async evaluatePending(): Promise<void> {
    for (const { model: tracked, index, member } of await this.store.closedWindows()) {
      await this.store.withLock(tracked, LOCK_MS, async () => {
        const last = await this.store.lastEvaluated(tracked);
        if (index <= last) {
          await this.store.discardWindow(tracked, index, member);
          return;
        }
        if (index !== last + 1) return; // an earlier window is still being evaluated elsewhere
        const record = await this.evaluateWindow(tracked, index);
        await this.store.finishWindow(tracked, index, member, record);
        await this.store.saveLatestDrift(tracked, record);
        this.counts.windows++;
      });
    }
  }

  private async evaluateWindow(tracked: TrackedModel, index: number): Promise<WindowRecord> {
    const observations = await this.store.closedWindow(tracked, index);
    const reference = await this.profiles.resolve(tracked);
    const base = { index, evaluatedAt: new Date().toISOString(), size: observations.length };
    if (!reference && observations.length > 0 && this.profiles.need > 0) {
      const learning = await this.profiles.learn(
        tracked,
        observations.filter((o) => Object.keys(o.numeric).length > 0),
      );
      return learningRecord(
        tracked,
        base,
        observations.map((o) => o.at),
        { have: learning.have, need: learning.need },
      );
    }
    if (!reference || observations.length === 0) {
      this.log.warn({ model: tracked, index }, 'window without a reference profile: drift not computed');
      return unreferencedRecord(
        tracked,
        base,
        observations.map((o) => o.at),
      );
    }
    const drift = evaluateWindow(reference.profile, observations, this.options.thresholdsFor);
    const states = await this.announcer.apply(tracked, driftDecisions(drift), { index, drift });
    const record = { ...evaluatedRecord(tracked, base, drift, states), reference: reference.origin };
    this.log.info(
      {
        model: tracked.model,
        modelName: tracked.name,
        window: index,
        size: drift.size,
        psi: Object.fromEntries(Object.entries(record.features).map(([k, f]) => [k, round(f.value)])),
      },
      'window evaluated',
    );
    return record;
  }

  private async judgeQuality(tracked: TrackedModel): Promise<void> {
    const snapshot = quality(await this.store.labels(tracked), this.options.quality.confidence);
    await this.store.saveLatestQuality(tracked, snapshot);
    const { target, minLabels } = this.options.quality;
    const level = qualityLevel(snapshot, target, minLabels);
    if (level === 'insufficient_data') return;
    const now = new Date().toISOString();
    await this.announcer.apply(
      tracked,
      [{ feature: 'quality', level, figures: { metric: 'accuracy', value: snapshot.accuracy, threshold: target } }],
      { index: snapshot.labelled, drift: { size: snapshot.covered, from: now, to: now } },
    );
  }
}
