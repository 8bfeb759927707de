import type { Logger } from './logger.js';

/**
 * The same shutdown for every process: the first SIGTERM or SIGINT runs the steps in order (stop
 * taking work, finish in-flight work within the budget, close connections last), every step runs
 * even if an earlier one failed, and a force-exit timer guards against a step that hangs. A second
 * signal is logged and ignored so an impatient Ctrl-C does not cut a drain short; the timer ends it.
 */
export interface ShutdownStep {
  readonly name: string;
  run(): Promise<unknown>;
}

export type Shutdown = (reason: string, exitCode?: number) => Promise<void>;

export function installShutdown(log: Logger, steps: readonly ShutdownStep[], budgetMs: number): Shutdown {
  let running: Promise<void> | undefined;
  const shutdown: Shutdown = (reason, exitCode = 0) => {
    if (running) {
      log.warn({ reason }, 'shutdown already in progress; waiting for it');
      return running;
    }
    log.info({ reason, budgetMs }, 'shutting down');
    const force = setTimeout(() => {
      log.error({ budgetMs }, 'shutdown budget exceeded; exiting');
      process.exit(1);
    }, budgetMs + 2000);
    force.unref();
    running = (async () => {
      let failed = false;
      for (const step of steps) {
        try {
          await step.run();
          log.debug({ step: step.name }, 'shutdown step done');
        } catch (error) {
          failed = true;
          log.error({ err: error, step: step.name }, 'shutdown step failed');
        }
      }
      log.info('shutdown complete');
      clearTimeout(force);
      // Everything that matters is closed; a forgotten timer or socket must not keep a stopped
      // service alive (and hold its container) after this point. Buffered log lines go out first.
      await new Promise<void>((resolve) => log.flush(() => resolve()));
      process.exit(failed ? 1 : exitCode);
    })();
    return running;
  };
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.on(signal, () => void shutdown(signal));
  }
  return shutdown;
}

/** Fatal errors that escape everything: log them and start an orderly shutdown. */
export function installCrashHandlers(log: Logger, shutdown: Shutdown): void {
  process.on('uncaughtException', (error) => {
    log.fatal({ err: error }, 'uncaught exception');
    void shutdown('uncaughtException', 1);
  });
  process.on('unhandledRejection', (reason) => {
    log.fatal({ err: reason }, 'unhandled rejection');
    void shutdown('unhandledRejection', 1);
  });
}

/**
 * Whether `promise` fulfils within `ms` (a rejection propagates). Shutdown steps use it to wait
 * for something that may never finish — a drain, a QUIT, a blocked read while Redis is away —
 * without letting it eat the whole budget.
 */
export async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    const settled = promise.then(() => true);
    // A rejection after the deadline has nobody left to tell; it must not become an unhandled one.
    settled.catch(() => undefined);
    return await Promise.race([settled, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
