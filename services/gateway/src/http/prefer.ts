import { isPriority, type Priority } from './priority.js';

/**
 * RFC 7240 `Prefer` for the predict endpoint: `respond-async` asks for 202 at once; `wait=<s>`
 * bounds how long a synchronous request waits (capped by configuration); `priority=low|normal|high`
 * asks for a place in the queue (capped by the tenant's maximum, http/priority.ts). Unknown
 * preferences and values are ignored, as RFC 7240 asks.
 */
export interface Preference {
  readonly respondAsync: boolean;
  readonly waitSeconds: number;
  /** The priority asked for, if a valid one was. */
  readonly priority?: Priority | undefined;
  /** The value for `Preference-Applied`, without the priority (which is applied after capping: `appliedWith`). */
  readonly applied: string;
}

export function parsePrefer(header: string, defaultWaitSeconds: number, maxWaitSeconds: number): Preference {
  let respondAsync = false;
  let wait: number | undefined;
  let priority: Priority | undefined;
  for (const token of header.split(/[,;]/)) {
    const [rawName, rawValue] = token.split('=', 2).map((s) => s.trim().toLowerCase());
    if (rawName === 'respond-async') respondAsync = true;
    if (rawName === 'wait' && rawValue) {
      const seconds = Number(rawValue);
      if (Number.isFinite(seconds) && seconds >= 0) wait = seconds;
    }
    if (rawName === 'priority' && rawValue && isPriority(rawValue)) priority = rawValue;
  }
  const asked = priority ? { priority } : {};
  if (respondAsync) return { respondAsync, waitSeconds: 0, ...asked, applied: 'respond-async' };
  const waitSeconds = Math.min(wait ?? defaultWaitSeconds, maxWaitSeconds);
  return { respondAsync, waitSeconds, ...asked, applied: `wait=${waitSeconds}` };
}

/**
 * `Preference-Applied` for a request served at `priority`: the priority is named only when one was
 * asked for, with the value applied (which is lower than asked when the tenant's maximum capped it).
 */
export function appliedWith(preference: Preference, priority: Priority): string {
  return preference.priority ? `${preference.applied}, priority=${priority}` : preference.applied;
}
