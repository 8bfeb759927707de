/** Polls `probe` every 100 ms until it yields something other than undefined or false, and returns that. */
export async function until<T>(what: string, probe: () => Promise<T | undefined | false>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * An absence check: watches for `ms` that `happened` (what must NOT happen) stays false, polling
 * every 50 ms, and fails as soon as it turns true, naming `what`. Only for things that have no later
 * event to wait for; anything that can be waited for positively is waited for with `until`.
 * A window can only show that something did not happen within it, so callers choose `ms` as the
 * longest the behaviour could plausibly take to show on a loaded machine, and say so.
 */
export async function quietFor(ms: number, what: string, happened: () => boolean | Promise<boolean>): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    if (await happened()) throw new Error(`expected no ${what} for ${ms} ms, but it happened`);
    if (Date.now() >= end) return;
    await new Promise((r) => setTimeout(r, Math.min(50, Math.max(0, end - Date.now()))));
  }
}
