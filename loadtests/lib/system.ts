import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort } from '../../harness/free-port.js';
import { startRedis, type LocalRedis } from '../../harness/redis-server.js';
import { spawnService, type ServiceProcess } from '../../harness/service-process.js';
import { ensureModerationModel } from '../../scripts/models/moderation.js';
import { LOADTEST_MODELS } from './images.js';

/**
 * A whole Conveyor system for a load test, as `make run` starts it but on free ports and from the
 * compiled dist/ (`npm run build`): a private redis-server, N inference workers, the gateway and the
 * drift monitor. Every worker serves both models (MODELS=digits,moderation, as
 * `MODELS=digits,moderation make run` does), each on its own queue with the shipped concurrency, and
 * the system counts as ready once every worker is listed and each model has a warm one. Workers can be added while it runs (the scale-out proof). Everything is stopped by
 * `stop()`, and by a signal to this process.
 */
export interface LoadSystem {
  readonly url: string;
  readonly redisUrl: string;
  readonly monitorUrl: string;
  /** The models the workers serve (SystemOptions.models, else every load-test model). */
  readonly models: readonly string[];
  /** Process ids by label (`redis`, `gateway`, `worker-1`…, `monitor`), for RSS samples from /proc. */
  pids(): Record<string, number>;
  /** The workers' Prometheus endpoints (set when SystemOptions.workerMetrics). */
  readonly workerMetricsUrls: readonly string[];
  workerCount(): number;
  /** Starts `count` more workers and resolves once /ready lists all of them. */
  addWorkers(count: number): Promise<void>;
  stop(): Promise<void>;
}

export interface SystemOptions {
  workers: number;
  /** Extra gateway environment. */
  gateway?: Record<string, string>;
  /** Extra worker environment (e.g. WORKER_CONCURRENCY). */
  worker?: Record<string, string>;
  /** Extra monitor environment (e.g. PREDICTION_TTL_SECONDS). */
  monitor?: Record<string, string>;
  /** Print the services' log lines (otherwise only what they write to stderr: crashes). */
  verbose?: boolean;
  /** The models every worker serves (default: both load-test models; the moderation model is built if missing). */
  models?: readonly string[];
  /** Redis `maxmemory` (noeviction), as `make run` sets it (e.g. '1gb'); default: none, as the tests. */
  redisMaxMemory?: string;
  /** Redis with its append-only file, as `make run` keeps it (default: off). */
  redisPersist?: boolean;
  /** Give each worker a Prometheus endpoint on a free port (its job outcomes, e.g. not_published). */
  workerMetrics?: boolean;
}

/**
 * The load tests' own gateway settings. URL_ALLOW_CIDRS lets image URLs resolve to 127.0.0.1, where
 * the Locust scenario serves its images: the gateway refuses loopback URLs otherwise (SSRF
 * protection), and must keep doing so everywhere but here. The load generators (Locust's users,
 * vegeta's connections) stand for many clients but all connect from 127.0.0.1: the per-address
 * connection share would cap the generator itself, so it is the total here. (The soak's hostile
 * clients connect from other loopback addresses, each its own client.)
 */
export const LOADTEST_GATEWAY_ENV = { URL_ALLOW_CIDRS: '127.0.0.1/32', MAX_CONNECTIONS_PER_CLIENT: '1024' } as const;

export async function startSystem(options: SystemOptions): Promise<LoadSystem> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-loadtest-'));
  const services: ServiceProcess[] = [];
  let redis: LocalRedis | undefined;
  let stopped = false as boolean;
  // The services log as they do in production (their cost is part of what is measured), to stdout,
  // which is dropped unless verbose: parsing every line here would load the shared cores.
  const logs = options.verbose ?? false;
  const onRecord = (label: string) => (_record: Record<string, unknown>, raw: string) => console.error(`[${label}] ${raw}`);
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    // As `make run` stops: the gateway (no new work), the workers (they drain), the monitor, Redis.
    await services.find((s) => s.name === 'gateway')?.stop();
    await Promise.all(services.filter((s) => s.name.startsWith('worker')).map((s) => s.stop()));
    await services.find((s) => s.name === 'monitor')?.stop();
    await redis?.stop();
    rmSync(dir, { recursive: true, force: true });
  };
  const onSignal = () => {
    void stop().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const served = options.models ?? LOADTEST_MODELS;
    // models/moderation/model.onnx is built at build time, not committed: built here if missing.
    if (served.includes('moderation')) await ensureModerationModel();
    redis = await startRedis({
      dir: path.join(dir, 'redis'),
      ...(options.redisMaxMemory ? { maxMemory: options.redisMaxMemory } : {}),
      ...(options.redisPersist ? { persist: true } : {}),
    });
    const env = { REDIS_URL: redis.url };
    const models = served.join(',');
    const workerMetricsUrls: string[] = [];
    const port = await freePort();
    const monitorPort = await freePort();
    const url = `http://127.0.0.1:${port}`;
    let workers = 0;
    const startWorkers = async (count: number) => {
      for (let i = 0; i < count; i++) {
        workers++;
        const label = `worker-${workers}`;
        const metrics: Record<string, string> = {};
        if (options.workerMetrics) {
          const metricsPort = await freePort();
          metrics.METRICS_PORT = String(metricsPort);
          workerMetricsUrls.push(`http://127.0.0.1:${metricsPort}/metrics`);
        }
        services.push(
          spawnService(
            'inference-worker',
            { ...env, MODELS: models, ...metrics, ...options.worker },
            { label, logs, built: true, onRecord: onRecord(label) },
          ),
        );
      }
    };
    const ready = async (count: number) => {
      await waitFor(`the gateway with ${count} worker(s) ready`, async () => {
        for (const s of services) if (s.child.exitCode !== null) throw new Error(`${s.name} exited with ${s.child.exitCode}`);
        const r = await fetch(`${url}/ready`).catch(() => undefined);
        if (!r?.ok) return false;
        const body = (await r.json()) as { workers?: unknown[]; models?: Record<string, { ready?: boolean }> };
        return (body.workers?.length ?? 0) >= count && served.every((m) => body.models?.[m]?.ready === true);
      });
    };
    await startWorkers(options.workers);
    services.push(
      spawnService(
        'gateway',
        { ...env, ...LOADTEST_GATEWAY_ENV, MODELS: models, ...options.gateway, PORT: String(port), HOST: '127.0.0.1' },
        { logs, built: true, onRecord: onRecord('gateway') },
      ),
    );
    services.push(
      spawnService(
        'monitor',
        {
          ...env,
          MONITOR_PORT: String(monitorPort),
          MONITOR_HOST: '127.0.0.1',
          REPORT_DIR: path.join(dir, 'reports'),
          // No periodic report in the middle of a measurement.
          REPORT_INTERVAL_MS: '0',
          ...options.monitor,
        },
        { logs, built: true, onRecord: onRecord('monitor') },
      ),
    );
    await ready(options.workers);
    const monitorUrl = `http://127.0.0.1:${monitorPort}`;
    await waitFor('the monitor', async () => (await fetch(`${monitorUrl}/ready`).catch(() => undefined))?.ok === true);
    return {
      url,
      redisUrl: redis.url,
      monitorUrl,
      models: served,
      workerMetricsUrls,
      pids: () => {
        const pids: Record<string, number> = redis ? { redis: redis.pid } : {};
        for (const s of services) if (s.child.pid !== undefined) pids[s.name] = s.child.pid;
        return pids;
      },
      workerCount: () => workers,
      addWorkers: async (count) => {
        await startWorkers(count);
        await ready(workers);
      },
      stop: async () => {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
        await stop();
      },
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

export async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 90_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Jobs waiting in every model's queue, from the gateway's /metrics (conveyor_queue_waiting_jobs, one series per model). */
export async function queueDepth(gatewayUrl: string): Promise<number> {
  const text = await (await fetch(`${gatewayUrl}/metrics`)).text();
  const lines = text
    .split('\n')
    .filter((l) => l.startsWith('conveyor_queue_waiting_jobs ') || l.startsWith('conveyor_queue_waiting_jobs{'));
  return lines.length === 0 ? NaN : lines.reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
}
