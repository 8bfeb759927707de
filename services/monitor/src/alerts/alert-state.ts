import type { Level } from '../drift/window.js';
import type { FeatureState } from '../store/store-records.js';

export type { FeatureState };

/**
 * Alert hysteresis, deduplication and cooldown for one monitored feature, as a pure function of
 * the previous state and the level observed in a new window.
 *
 * - The state changes only after `consecutive` windows in a row agree on the new level.
 * - An episode (from leaving OK to returning to OK) emits at most one notification per severity,
 *   only when it escalates (warn, then alert), and one `resolved` at its end.
 * - A new episode starting within `cooldownMs` of the last resolution is not announced again.
 *
 * So a sustained drift produces one alert and one resolution, not a storm (no anchor tool does this).
 */
export interface AlertPolicy {
  consecutive: number;
  cooldownMs: number;
}

export const INITIAL_STATE: FeatureState = {
  level: 'ok',
  pending: null,
  streak: 0,
  announced: 'none',
  suppressed: false,
  resolvedAt: null,
};

export interface Transition {
  from: Level;
  to: Level;
  /** What to announce, if anything. */
  notify: 'warn' | 'alert' | 'resolved' | null;
}

const rank: Record<Level, number> = { ok: 0, warn: 1, alert: 2 };

export function step(
  state: FeatureState,
  observed: Level,
  now: number,
  policy: AlertPolicy,
): { state: FeatureState; transition: Transition | null } {
  if (observed === state.level) return { state: { ...state, pending: null, streak: 0 }, transition: null };
  const streak = state.pending === observed ? state.streak + 1 : 1;
  if (streak < policy.consecutive) return { state: { ...state, pending: observed, streak }, transition: null };

  const from = state.level;
  const next: FeatureState = { ...state, level: observed, pending: null, streak: 0 };
  let notify: Transition['notify'] = null;
  if (observed === 'ok') {
    if (state.announced !== 'none' && !state.suppressed) notify = 'resolved';
    next.announced = 'none';
    next.suppressed = false;
    next.resolvedAt = now;
  } else {
    if (from === 'ok') next.suppressed = state.resolvedAt !== null && now - state.resolvedAt < policy.cooldownMs;
    if (!next.suppressed && rank[observed] > rank[state.announced === 'none' ? 'ok' : state.announced]) {
      notify = observed;
      next.announced = observed;
    }
  }
  return { state: next, transition: { from, to: observed, notify } };
}
