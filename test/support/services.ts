import { loadConfig } from '@conveyor/shared/config';
import type { Service } from '@conveyor/shared/lifecycle';
import { createLogger, type Logger } from '@conveyor/shared/logger';
import {
  LogFollower,
  spawnService,
  type LogRecord,
  type ServiceHandle,
  type ServiceProcess,
} from '../../harness/service-process.js';
import { GatewayConfig } from '../../services/gateway/src/config.js';
import { startGateway as startGatewayService } from '../../services/gateway/src/gateway.service.js';
import { MonitorConfig } from '../../services/monitor/src/config.js';
import { startMonitor as startMonitorService } from '../../services/monitor/src/monitor.service.js';
import { testRedisUrl } from './redis.js';

/**
 * The services of integration tests, against the test Redis with the given prefix; their log records
 * are kept for assertions.
 *
 * The gateway and the monitor run **in this process** by default: the same `start(config, log)` their
 * main.ts runs, on port 0, stopped the way a SIGTERM stops them — no process to start (each spawn
 * costs ~1 s of CPU to load the sources) and a debugger sees both sides. A test spawns them as
 * processes (`spawnGateway`, `spawnMonitor`) only where the process is the point: signals, kills,
 * its memory or CPU, its environment. Workers are always processes: a worker restricts sharp's
 * decoders process-wide (shared/src/model/decoders.ts), which would change what every later suite
 * in this process may decode, and most worker tests kill, freeze or starve one.
 */
export interface Gateway extends ServiceHandle {
  readonly url: string;
}

const gatewayEnv = (prefix: string, env: Record<string, string>) => ({
  REDIS_URL: testRedisUrl(),
  REDIS_PREFIX: prefix,
  PORT: '0',
  HOST: '127.0.0.1',
  LOG_LEVEL: 'debug',
  ...env,
});

/** A gateway in this process. */
export async function startGateway(prefix: string, env: Record<string, string> = {}, label = 'gateway'): Promise<Gateway> {
  const config = loadConfig(GatewayConfig, { ...process.env, ...gatewayEnv(prefix, env) });
  const { handle, service } = await inProcess(label, 'gateway', config.LOG_LEVEL, (log) => startGatewayService(config, log));
  return Object.assign(handle, { url: `http://127.0.0.1:${String(service.port)}` });
}

/** A gateway in a process of its own (signals, its memory, its environment). */
export async function spawnGateway(prefix: string, env: Record<string, string> = {}): Promise<Gateway & ServiceProcess> {
  const proc = spawnService('gateway', gatewayEnv(prefix, env));
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

const monitorEnv = (prefix: string, env: Record<string, string>) => ({
  REDIS_URL: testRedisUrl(),
  REDIS_PREFIX: prefix,
  LOG_LEVEL: 'debug',
  MONITOR_PORT: '0',
  MONITOR_HOST: '127.0.0.1',
  REPORT_INTERVAL_MS: '0',
  ...env,
});

/** A monitor in this process. */
export async function startMonitor(
  prefix: string,
  env: Record<string, string> = {},
  label = 'monitor',
): Promise<ServiceHandle & { url: string }> {
  const config = loadConfig(MonitorConfig, { ...process.env, ...monitorEnv(prefix, env) });
  const { handle, service } = await inProcess(label, 'monitor', config.LOG_LEVEL, (log) => startMonitorService(config, log));
  return Object.assign(handle, { url: `http://127.0.0.1:${String(service.port)}` });
}

/** A monitor in a process of its own (frozen with SIGSTOP, killed). */
export async function spawnMonitor(
  prefix: string,
  env: Record<string, string> = {},
  label = 'monitor',
): Promise<ServiceProcess & { url: string }> {
  const proc = spawnService('monitor', monitorEnv(prefix, env), { label });
  const listening = await proc.waitFor((r) => r.msg === 'monitor listening', 30_000);
  return Object.assign(proc, { url: `http://127.0.0.1:${String(listening.port)}` });
}

/**
 * Starts a service in this process with a logger whose lines become its records. Stopping it runs
 * its own stop() (what its SIGTERM handler runs in a process); `exited` then settles with 0.
 */
async function inProcess<S extends Service>(
  name: string,
  service: string,
  level: string,
  start: (log: Logger) => Promise<S>,
): Promise<{ handle: ServiceHandle; service: S }> {
  let ended!: (code: number | null) => void;
  const exited = new Promise<number | null>((resolve) => (ended = resolve));
  const follower = new LogFollower(name, exited);
  const log = createLogger(service, level, { stream: { write: (line: string) => follower.line(line) } });
  const started = await start(log);
  let running = true;
  const handle: ServiceHandle = {
    name,
    records: follower.records,
    exited,
    get running() {
      return running;
    },
    waitFor: (predicate, timeoutMs) => follower.waitFor(predicate, timeoutMs),
    async stop() {
      if (running) {
        running = false;
        await started.stop();
        ended(0);
      }
      return exited;
    },
  };
  return { handle, service: started };
}

export async function stopAll(...services: (ServiceHandle | undefined)[]): Promise<void> {
  await Promise.all(services.filter((s) => s !== undefined).map((s) => s.stop('SIGTERM')));
}

export function recordsWith(service: ServiceHandle, field: string, value: unknown): LogRecord[] {
  return service.records.filter((r) => r[field] === value);
}

/** In an afterEach hook: when the test failed, print the last log lines of the services. */
export function dumpLogsOnFailure(ctx: Mocha.Context, ...services: (ServiceHandle | undefined)[]): void {
  if (ctx.currentTest?.state !== 'failed') return;
  for (const service of services) {
    if (!service) continue;
    const tail = service.records.slice(-20).map((r) => `  ${JSON.stringify(r).slice(0, 600)}`);
    console.log(`--- last lines of ${service.name} (${service.running ? 'running' : 'ended'}) ---\n${tail.join('\n')}`);
  }
}
