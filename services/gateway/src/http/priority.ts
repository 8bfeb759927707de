/**
 * Request priorities (`Prefer: priority=low|normal|high`), lowest first. A request gets the one it
 * asks for (`normal` without asking), capped by the highest its tenant may use: an API key's stored
 * maximum, or ADDRESS_MAX_PRIORITY for an address when keys are off. Asking too high is not an
 * error: the request is served at its maximum and `Preference-Applied` says so.
 */
export const PRIORITIES = ['low', 'normal', 'high'] as const;
export type Priority = (typeof PRIORITIES)[number];

export function isPriority(value: string): value is Priority {
  return (PRIORITIES as readonly string[]).includes(value);
}

/** `asked`, or `max` if that is lower: a request may step back below its maximum, never above it. */
export function capPriority(asked: Priority, max: Priority): Priority {
  return PRIORITIES.indexOf(asked) <= PRIORITIES.indexOf(max) ? asked : max;
}
