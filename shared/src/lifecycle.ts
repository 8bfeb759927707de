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

/**
 * A started service, whatever it is: what `start(config, log)` of each service returns, so a
 * process (main.ts, through runService) and a test (in-process) start and stop it the same way.
 */
export interface Service {
  /** Stops taking work, finishes in-flight work, closes connections last. Idempotent; rejects if a step failed. */
  stop(): Promise<void>;
  /**
   * Settles once the service is wholly up (a worker: every model warm and taking jobs). A rejection
   * means it cannot go on: the process stops (a ServiceFailure's exit code, else 1).
   */
  readonly ready?: Promise<void>;
}

/** A failure that ends the process with a chosen exit code; `logged` when the service reported it already. */
export class ServiceFailure extends Error {
  override readonly name = 'ServiceFailure';

  constructor(
    message: string,
    readonly exitCode: number,
    readonly logged = true,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/**
 * The steps as one idempotent stop(): in order, once however often it is called, every step even if
 * an earlier one failed; the returned promise rejects (after the last step) if any failed.
 */
export function stopSteps(log: Logger, steps: readonly ShutdownStep[]): () => Promise<void> {
  let running: Promise<void> | undefined;
  const run = async () => {
    const failures: unknown[] = [];
    for (const step of steps) {
      try {
        await step.run();
        log.debug({ step: step.name }, 'shutdown step done');
      } catch (error) {
        failures.push(error);
        log.error({ err: error, step: step.name }, 'shutdown step failed');
      }
    }
    if (failures.length > 0) throw new AggregateError(failures, `${failures.length} shutdown step(s) failed`);
  };
  return () => (running ??= run());
}

/**
 * The whole life of a service's process, for its main.ts: start it, then the shared shutdown on the
 * first signal, a fatal error, or the service failing on its own (`ready` rejecting). A start that
 * throws ends the process at once (there is nothing to drain yet).
 */
export async function runService<S extends Service>(log: Logger, start: () => Promise<S>, budgetMs: number): Promise<S> {
  let service: S;
  try {
    service = await start();
  } catch (error) {
    if (!(error instanceof ServiceFailure && error.logged)) log.fatal({ err: error }, 'could not start');
    await new Promise<void>((resolve) => log.flush(() => resolve()));
    process.exit(error instanceof ServiceFailure ? error.exitCode : 1);
  }
  const shutdown = installShutdown(log, [{ name: 'service', run: () => service.stop() }], budgetMs);
  installCrashHandlers(log, shutdown);
  service.ready?.catch((error: unknown) => {
    if (!(error instanceof ServiceFailure && error.logged)) log.fatal({ err: error }, 'the service failed');
    void shutdown(error instanceof Error ? error.message : String(error), error instanceof ServiceFailure ? error.exitCode : 1);
  });
  return service;
}

export function installShutdown(log: Logger, steps: readonly ShutdownStep[], budgetMs: number): Shutdown {
  const stop = stopSteps(log, steps);
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
      const failed = await stop().then(
        () => false,
        () => true,
      );
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
