import type { Level, WindowDrift } from '../drift/window.js';
import type { MonitorStore } from '../store/monitor-store.js';
import type { TrackedModel } from '../store/store-records.js';
import type { AlertSink } from './alert-sink.js';
import { INITIAL_STATE, step, type AlertPolicy } from './alert-state.js';
import { alertMessage, type AlertFigures } from './alert-wording.js';

/**
 * Where a level observed in a window becomes a state, and a state change an alert: each feature's
 * state machine (alert-state.ts) is stepped, the states of one model version are saved together,
 * and what the machine says to announce goes to the alert sink, worded by alert-wording.ts.
 */
export interface Decision {
  readonly feature: string;
  readonly level: Level;
  readonly figures: AlertFigures;
}

/** A closed window's drift as the alert states judge it: one decision per feature. */
export function driftDecisions(drift: WindowDrift): Decision[] {
  return Object.entries(drift.features).map(([feature, d]) => ({
    feature,
    level: d.level,
    figures: { metric: d.metric, value: d.value, threshold: d.level === 'alert' ? d.thresholds.alert : d.thresholds.warn },
  }));
}

export interface DecidedOn {
  readonly index: number;
  readonly drift: Pick<WindowDrift, 'size' | 'from' | 'to'>;
}

export class Announcer {
  /** Alerts emitted by this instance. */
  announced = 0;

  constructor(
    private readonly store: MonitorStore,
    private readonly sink: AlertSink,
    private readonly policy: AlertPolicy,
  ) {}

  /**
   * Steps each feature's state machine and announces what it says to announce. The states are read
   * and written once for all features of the window (two commands, not two per feature), and saved
   * before anything is announced. Returns each feature's level after the window.
   */
  async apply(tracked: TrackedModel, decisions: readonly Decision[], window: DecidedOn): Promise<Record<string, Level>> {
    const previous = await this.store.featureStates(tracked);
    const now = Date.now();
    const steps = decisions.map((d) => ({ ...d, ...step(previous[d.feature] ?? INITIAL_STATE, d.level, now, this.policy) }));
    await this.store.saveFeatureStates(tracked, Object.fromEntries(steps.map((s) => [s.feature, s.state])));
    const version = { name: tracked.name, version: tracked.model.version };
    for (const { feature, figures, transition } of steps) {
      if (!transition?.notify) continue;
      this.announced++;
      await this.sink.emit({
        severity: transition.notify,
        metric: figures.metric,
        feature,
        value: figures.value,
        threshold: figures.threshold,
        window: { index: window.index, size: window.drift.size, from: window.drift.from, to: window.drift.to },
        model: tracked.model,
        name: tracked.name,
        state: { from: transition.from, to: transition.to },
        message: alertMessage(version, feature, transition.notify, figures),
      });
    }
    return Object.fromEntries(steps.map((s) => [s.feature, s.state.level]));
  }
}
