import { spawnService, type LogRecord, type ServiceProcess } from '../../harness/service-process.js';
import { testRedisUrl } from './redis.js';

/**
 * Real gateway and worker processes for integration tests, started from source against the test
 * Redis with the given prefix. Their log records are kept for assertions.
 */
export interface Gateway extends ServiceProcess {
  readonly url: string;
}

export async function startGateway(prefix: string, env: Record<string, string> = {}): Promise<Gateway> {
  const proc = spawnService('gateway', {
    REDIS_URL: testRedisUrl(),
    REDIS_PREFIX: prefix,
    PORT: '0',
    HOST: '127.0.0.1',
    LOG_LEVEL: 'debug',
    ...env,
  });
  const listening = await proc.waitFor((r) => r.msg === 'gateway listening', 30_000);
  return Object.assign(proc, { url: `http://127.0.0.1:${String(listening.port)}` });
}

export async function startWorker(
  prefix: string,
  env: Record<string, string> = {},
  label = 'worker',
): Promise<ServiceProcess & { id: string }> {
  const proc = spawnService(
    'inference-worker',
    { REDIS_URL: testRedisUrl(), REDIS_PREFIX: prefix, LOG_LEVEL: 'debug', HEARTBEAT_INTERVAL_MS: '500', ...env },
    { label },
  );
  const ready = await proc.waitFor((r) => r.msg === 'worker ready', 30_000);
  return Object.assign(proc, { id: String(ready.workerId) });
}

export async function startMonitor(
  prefix: string,
  env: Record<string, string> = {},
  label = 'monitor',
): Promise<ServiceProcess & { url: string }> {
  const proc = spawnService(
    'monitor',
    {
      REDIS_URL: testRedisUrl(),
      REDIS_PREFIX: prefix,
      LOG_LEVEL: 'debug',
      MONITOR_PORT: '0',
      MONITOR_HOST: '127.0.0.1',
      REPORT_INTERVAL_MS: '0',
      ...env,
    },
    { label },
  );
  const listening = await proc.waitFor((r) => r.msg === 'monitor listening', 30_000);
  return Object.assign(proc, { url: `http://127.0.0.1:${String(listening.port)}` });
}

export async function stopAll(...procs: (ServiceProcess | undefined)[]): Promise<void> {
  await Promise.all(procs.filter((p) => p !== undefined).map((p) => p.stop('SIGTERM')));
}

export function recordsWith(proc: ServiceProcess, field: string, value: unknown): LogRecord[] {
  return proc.records.filter((r) => r[field] === value);
}

/** In an afterEach hook: when the test failed, print the last log lines of the processes. */
export function dumpLogsOnFailure(ctx: Mocha.Context, ...procs: (ServiceProcess | undefined)[]): void {
  if (ctx.currentTest?.state !== 'failed') return;
  for (const proc of procs) {
    if (!proc) continue;
    const tail = proc.records.slice(-20).map((r) => `  ${JSON.stringify(r).slice(0, 600)}`);
    console.log(`--- last lines of ${proc.name} (exit ${String(proc.child.exitCode)}) ---\n${tail.join('\n')}`);
  }
}
