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

export function installShutdown(
  log: Logger,
  steps: readonly ShutdownStep[],
  budgetMs: number,
): (reason: string) => Promise<void> {
  let running: Promise<void> | undefined;
  const shutdown = (reason: string): Promise<void> => {
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
      process.exitCode = failed ? 1 : 0;
    })();
    return running;
  };
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.on(signal, () => void shutdown(signal));
  }
  return shutdown;
}

/** Fatal errors that escape everything: log them and start an orderly shutdown. */
export function installCrashHandlers(log: Logger, shutdown: (reason: string) => Promise<void>): void {
  process.on('uncaughtException', (error) => {
    log.fatal({ err: error }, 'uncaught exception');
    void shutdown('uncaughtException').finally(() => process.exit(1));
  });
  process.on('unhandledRejection', (reason) => {
    log.fatal({ err: reason }, 'unhandled rejection');
    void shutdown('unhandledRejection').finally(() => process.exit(1));
  });
}
