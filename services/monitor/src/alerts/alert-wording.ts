import type { Transition } from './alert-state.js';

/**
 * What an alert says, in one place: the line an operator reads in a log, a chat message or a
 * pager, so it names the model (serving name and version), the feature, what happened and the
 * figures. `model-a@3: brightness drifted (psi 0.41, threshold 0.25)`.
 */
export interface AlertFigures {
  readonly metric: string;
  readonly value: number | null;
  readonly threshold: number | null;
}

const VERBS: Record<NonNullable<Transition['notify']>, string> = {
  warn: 'is drifting',
  alert: 'drifted',
  resolved: 'is back to normal',
};

/** Figures in alerts, views and logs: four decimals are plenty for a PSI or an accuracy. */
export function round(value: number): number {
  return Math.round(value * 1e4) / 1e4;
}

export function alertMessage(
  model: { readonly name: string; readonly version: string },
  feature: string,
  notify: NonNullable<Transition['notify']>,
  figures: AlertFigures,
): string {
  const value = figures.value === null ? 'n/a' : String(round(figures.value));
  const threshold = figures.threshold === null ? '' : `, threshold ${figures.threshold}`;
  return `${model.name}@${model.version}: ${feature} ${VERBS[notify]} (${figures.metric} ${value}${threshold})`;
}
