import type { Level } from './window.js';
import type { TrackedModel, WindowRecord } from '../store/store-records.js';
import type { WindowDrift } from './window.js';

/** A closed window's drift as the monitor records it (the windows stream, the latest drift, the reports). */
type Base = Pick<WindowRecord, 'index' | 'evaluatedAt' | 'size'>;

const identity = (tracked: TrackedModel) => ({ model: tracked.model, name: tracked.name });

export function evaluatedRecord(
  model: TrackedModel,
  base: Base,
  drift: WindowDrift,
  states: Readonly<Record<string, Level>>,
): WindowRecord {
  const features: WindowRecord['features'] = {};
  for (const [feature, d] of Object.entries(drift.features)) {
    features[feature] = {
      metric: d.metric,
      value: d.value,
      js: d.js,
      level: d.level,
      state: states[feature] ?? d.level,
      warn: d.thresholds.warn,
      alert: d.thresholds.alert,
    };
  }
  return { ...identity(model), ...base, from: drift.from, to: drift.to, status: 'evaluated', features };
}

/** A window pooled into the reference being learned: counted, with no figures. */
export function learningRecord(
  model: TrackedModel,
  base: Base,
  times: readonly string[],
  learning: { have: number; need: number },
): WindowRecord {
  const sorted = [...times].sort();
  return {
    ...identity(model),
    ...base,
    from: sorted[0] ?? '',
    to: sorted.at(-1) ?? '',
    status: 'learning',
    features: {},
    learning,
  };
}

/** A window of a version without a reference profile: counted, with no figures. */
export function unreferencedRecord(model: TrackedModel, base: Base, times: readonly string[]): WindowRecord {
  const sorted = [...times].sort();
  return { ...identity(model), ...base, from: sorted[0] ?? '', to: sorted.at(-1) ?? '', status: 'no_reference', features: {} };
}
