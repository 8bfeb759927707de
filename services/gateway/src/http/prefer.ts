/**
 * RFC 7240 `Prefer` for the predict endpoint: `respond-async` asks for 202 at once; `wait=<s>`
 * bounds how long a synchronous request waits (capped by configuration).
 */
export interface Preference {
  readonly respondAsync: boolean;
  readonly waitSeconds: number;
  /** The value for `Preference-Applied`. */
  readonly applied: string;
}

export function parsePrefer(header: string, defaultWaitSeconds: number, maxWaitSeconds: number): Preference {
  let respondAsync = false;
  let wait: number | undefined;
  for (const token of header.split(/[,;]/)) {
    const [rawName, rawValue] = token.split('=', 2).map((s) => s.trim().toLowerCase());
    if (rawName === 'respond-async') respondAsync = true;
    if (rawName === 'wait' && rawValue) {
      const seconds = Number(rawValue);
      if (Number.isFinite(seconds) && seconds >= 0) wait = seconds;
    }
  }
  if (respondAsync) return { respondAsync, waitSeconds: 0, applied: 'respond-async' };
  const waitSeconds = Math.min(wait ?? defaultWaitSeconds, maxWaitSeconds);
  return { respondAsync, waitSeconds, applied: `wait=${waitSeconds}` };
}
