import { ProblemError } from '../../problem.js';

const DEADLINE = Symbol('deadline');
/** libvips' own (wall-clock) timeout is this many times the CPU budget. */
export const WALL_BACKSTOP = 3;
/** Preprocessings in flight in this process: they share its CPU time (see withDeadline). */
let inFlight = 0;

function cpuMs(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
}

/**
 * The job's answer does not wait past its budget, and the budget is CPU time, not wall-clock
 * time: a valid image that waits for a libuv thread behind other work, or whose process is paused
 * (SIGSTOP, a frozen VM, a throttled container) or starved by its neighbours, spends no CPU
 * meanwhile and is not refused for it. The process's CPU time (every thread: libvips', the event
 * loop's, onnxruntime's) is charged in equal shares to the preprocessings in flight, sampled
 * every tick; that over-charges (inference of other jobs counts too), never under-charges an image
 * that burns CPU itself. The libvips work itself cannot be cancelled from here; it ends when it
 * finishes or at libvips' own (wall-clock) backstop, on a libuv thread.
 */
export async function withDeadline<T>(work: Promise<T>, timeoutMs: number | undefined): Promise<T> {
  if (!timeoutMs) return work;
  let timer: NodeJS.Timeout | undefined;
  let charged = 0;
  inFlight++;
  const tick = Math.max(5, timeoutMs / 20);
  const expired = new Promise<typeof DEADLINE>((resolve) => {
    let last = cpuMs();
    const check = () => {
      const now = cpuMs();
      charged += (now - last) / Math.max(1, inFlight);
      last = now;
      if (charged >= timeoutMs) resolve(DEADLINE);
      else timer = setTimeout(check, Math.min(tick, timeoutMs - charged));
    };
    timer = setTimeout(check, Math.min(tick, timeoutMs));
  });
  try {
    const outcome = await Promise.race([work, expired]).catch((error: unknown) => {
      // libvips' wall-clock backstop, with the CPU budget unspent: paused or starved, retry it.
      if (isLibvipsTimeout(error) && charged < timeoutMs) {
        throw new PausedError(
          `libvips stopped at its wall-clock backstop after ${Math.round(charged)} of ${timeoutMs} ms of CPU: the process was paused or starved`,
        );
      }
      throw error;
    });
    if (outcome === DEADLINE) {
      work.catch(() => undefined); // settles later, unobserved
      throw new ProblemError(
        'processing-deadline',
        `Preparing the image took longer than ${timeoutMs} ms of CPU time; send a smaller or simpler image`,
        { deadlineMs: timeoutMs },
      );
    }
    return outcome;
  } finally {
    inFlight--;
    clearTimeout(timer);
  }
}

/** Transient: the image did not spend its budget; another attempt may well succeed. */
export class PausedError extends Error {
  override readonly name = 'PausedError';
}

export function isLibvipsTimeout(error: unknown): boolean {
  return error instanceof Error && /^timeout/i.test(error.message);
}
