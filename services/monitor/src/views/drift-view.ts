import { evaluateWindow, type Thresholds } from '../drift/window.js';
import { round } from '../alerts/alert-wording.js';
import type { References } from '../reference/learned-reference.js';
import type { MonitorStore } from '../store/monitor-store.js';
import type { QualitySnapshot, TrackedModel, WindowRecord } from '../store/store-records.js';

/**
 * What GET /drift shows: per model (serving name) and version, each feature's alert state, the last
 * evaluated window, the window filling now (provisional figures once it holds MIN_WINDOW events,
 * never alerted on) and the rolling quality. `current` marks the version a model served last — after
 * a hot swap the previous version stays listed with its last figures, and its open window stops
 * filling. Read from the shared state, so every monitor shows the same.
 */
export type CurrentWindow =
  | { status: 'insufficient_data' | 'no_reference'; size: number }
  /** No measured reference: the first windows are pooled into a learned one (`have` of `need` so far). */
  | { status: 'learning'; size: number; have: number; need: number }
  | { status: 'provisional'; size: number; features: Record<string, { metric: string; value: number; level: string }> };

export interface ModelVersionView {
  /** The serving name: the `model` label, the `{name}` of the routes. */
  readonly name: string;
  /** What was loaded under it (the reference profile's model). */
  readonly model: { name: string; version: string };
  readonly current: boolean;
  readonly lastEventAt: string | null;
  readonly states: Record<string, string>;
  readonly lastWindow: WindowRecord | null;
  readonly currentWindow: CurrentWindow;
  readonly quality: QualitySnapshot | { status: 'insufficient_data' };
}

export interface DriftView {
  readonly at: string;
  readonly windowSize: number;
  readonly minWindow: number;
  /** Serving names, each with its versions: what `models` lists, grouped. */
  readonly byModel: Record<string, { current: string | null; versions: string[] }>;
  readonly models: ModelVersionView[];
}

export interface DriftViewOptions {
  readonly windowSize: number;
  readonly minWindow: number;
  readonly thresholdsFor: (feature: string) => Thresholds;
}

/** The version of each serving name whose events came last (a tracked record without a time loses). */
export function currentVersions(models: readonly TrackedModel[]): Map<string, string> {
  const newest = new Map<string, TrackedModel>();
  for (const m of models) {
    const best = newest.get(m.name);
    if (!best || (m.lastEventAt ?? '') > (best.lastEventAt ?? '')) newest.set(m.name, m);
  }
  return new Map([...newest].map(([name, m]) => [name, m.model.version]));
}

export class DriftViews {
  constructor(
    private readonly store: MonitorStore,
    private readonly profiles: References,
    private readonly options: DriftViewOptions,
  ) {}

  /** Every model version, or only those of one serving name. */
  async view(only?: string): Promise<DriftView> {
    const all = await this.store.models();
    const current = currentVersions(all);
    const models = all.filter((m) => only === undefined || m.name === only);
    const byModel: DriftView['byModel'] = {};
    for (const m of models) {
      const entry = (byModel[m.name] ??= { current: current.get(m.name) ?? null, versions: [] });
      entry.versions.push(m.model.version);
    }
    return {
      at: new Date().toISOString(),
      windowSize: this.options.windowSize,
      minWindow: this.options.minWindow,
      byModel,
      models: await Promise.all(models.map((m) => this.versionView(m, current.get(m.name) === m.model.version))),
    };
  }

  private async versionView(tracked: TrackedModel, current: boolean): Promise<ModelVersionView> {
    const [open, profile, learning, states, lastWindow, quality] = await Promise.all([
      this.store.openWindow(tracked),
      this.profiles.get(tracked),
      this.profiles.learning(tracked),
      this.store.featureStates(tracked),
      this.store.latestDrift(tracked),
      this.store.latestQuality(tracked),
    ]);
    let currentWindow: CurrentWindow;
    if (!profile && learning) currentWindow = { status: 'learning', size: open.length, ...learning };
    else if (open.length < this.options.minWindow) currentWindow = { status: 'insufficient_data', size: open.length };
    else if (!profile) currentWindow = { status: 'no_reference', size: open.length };
    else {
      const drift = evaluateWindow(profile, open, this.options.thresholdsFor);
      currentWindow = {
        status: 'provisional',
        size: open.length,
        features: Object.fromEntries(
          Object.entries(drift.features).map(([k, f]) => [k, { metric: f.metric, value: round(f.value), level: f.level }]),
        ),
      };
    }
    return {
      name: tracked.name,
      model: tracked.model,
      current,
      lastEventAt: tracked.lastEventAt ?? null,
      states: Object.fromEntries(Object.entries(states).map(([k, s]) => [k, s.level])),
      lastWindow: lastWindow ?? null,
      currentWindow,
      quality: quality ?? { status: 'insufficient_data' },
    };
  }
}
