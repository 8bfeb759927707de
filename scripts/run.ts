import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { prettyFactory } from 'pino-pretty';
import { z } from 'zod';
import { loadConfig, modelsConfigShape } from '@conveyor/shared/config';
import { readManifest } from '@conveyor/shared/model/runtime';
import { parseArgs } from 'node:util';
import { freePort } from '../harness/free-port.js';
import {
  INSTALL_HINT,
  PortInUseError,
  portOccupant,
  redisServerAvailable,
  startRedis,
  type LocalRedis,
} from '../harness/redis-server.js';
import { ROOT, spawnService, type ServiceProcess } from '../harness/service-process.js';

/**
 * `make run`: the gateway, the inference workers and the drift monitor in the foreground, every log line prefixed with
 * its process. Redis comes from REDIS_URL, else a local redis-server is started on REDIS_PORT (default 6379) with its
 * data in ./data/redis and stopped on exit. Ctrl-C or SIGTERM stops everything in order.
 *
 * The workers serve the default model (digits) unless MODELS says otherwise (`MODELS=digits,moderation make run`:
 * every worker serves both, each model on its own queue). A model folder without its ONNX file is built first when
 * this repository knows how (models/moderation: `make model-moderation`, ~20 s), else the run stops and says so.
 *
 * Each worker gets a Prometheus endpoint of its own: METRICS_PORT (default 9101, next to the monitor's 9100) for the
 * first, the next port for the second, and so on; METRICS_PORT=0 lets the OS choose. The URLs are printed once the
 * workers listen.
 */
const { values } = parseArgs({ options: { workers: { type: 'string', default: process.env.WORKERS ?? '1' } } });
const workerCount = Math.max(1, Number(values.workers) || 1);
const DEFAULT_REDIS_PORT = 6379;
const DEFAULT_METRICS_PORT = 9101;
const metricsBase = Number(process.env.METRICS_PORT ?? DEFAULT_METRICS_PORT);
if (!Number.isInteger(metricsBase) || metricsBase < 0 || metricsBase + workerCount - 1 > 65_535) {
  console.error(
    `[run] METRICS_PORT must be a TCP port (0-65535) leaving room for ${workerCount} workers, got ${JSON.stringify(process.env.METRICS_PORT)}`,
  );
  process.exit(1);
}

const models = await checkModels();

/** The models the workers will serve, each folder ready (built if it can be); exits with the reason otherwise. */
async function checkModels(): Promise<{ name: string; dir: string }[]> {
  let config;
  try {
    config = loadConfig(z.object(modelsConfigShape), process.env);
  } catch (error) {
    console.error(`[run] ${error instanceof Error ? error.message : String(error)}`);
    process.exit(1);
  }
  const modelsDir = process.env.MODELS_DIR || 'models';
  const planned = (config.MODELS ?? [{ name: config.DEFAULT_MODEL }]).map(({ name }) => ({
    name,
    dir: path.resolve(ROOT, (name === config.DEFAULT_MODEL && process.env.MODEL_DIR) || path.join(modelsDir, name)),
  }));
  // Served from the registry, the folders are not read.
  if (process.env.MLFLOW_TRACKING_URI) return planned;
  for (const { name, dir } of planned) {
    const file = await modelFile(dir);
    if (file.ok) continue;
    if (dir === path.join(ROOT, 'models', 'moderation')) {
      console.log(`[run] models/moderation has no model.onnx yet: building it (make model-moderation, ~20 s)…`);
      try {
        const { ensureModerationModel } = await import('./models/moderation.js');
        await ensureModerationModel();
        continue;
      } catch (error) {
        console.error(`[run] building models/moderation failed: ${error instanceof Error ? error.message : String(error)}`);
        console.error('[run] build it with `make model-moderation` (needs python3 with venv), then run again');
        process.exit(1);
      }
    }
    console.error(`[run] the model ${name} cannot be served from ${path.relative(ROOT, dir) || dir}: ${file.reason}`);
    console.error(
      '[run] a model folder holds model.onnx and manifest.json (see README, "Add a model"); set MODELS_DIR or MODELS',
    );
    process.exit(1);
  }
  return planned;
}

/** Whether a model folder has its manifest and the ONNX file the manifest names, with its sha256. */
async function modelFile(dir: string): Promise<{ ok: true } | { ok: false; reason: string }> {
  try {
    const manifest = await readManifest(dir);
    const bytes = await readFile(path.join(dir, manifest.file)).catch(() => undefined);
    if (!bytes) return { ok: false, reason: `${manifest.file} is missing` };
    const sha256 = createHash('sha256').update(bytes).digest('hex');
    return sha256 === manifest.sha256
      ? { ok: true }
      : { ok: false, reason: `${manifest.file} does not have the manifest's sha256` };
  } catch (error) {
    return { ok: false, reason: error instanceof Error ? error.message : String(error) };
  }
}

let redis: Promise<LocalRedis> | undefined;
const services: ServiceProcess[] = [];
// `as boolean`: set by a signal handler between awaits, which TypeScript's narrowing does not see.
let stopping = false as boolean;
async function stopAll(code: number): Promise<void> {
  if (stopping) return;
  stopping = true;
  console.log('[run] stopping…');
  // Gateway first (no new work), then workers (they drain), then the monitor, then Redis (once
  // it is up, if a signal came while it was starting).
  await services.find((s) => s.name === 'gateway')?.stop('SIGTERM');
  await Promise.all(services.filter((s) => s.name !== 'gateway' && s.name !== 'monitor').map((s) => s.stop('SIGTERM')));
  await services.find((s) => s.name === 'monitor')?.stop('SIGTERM');
  await (await redis?.catch(() => undefined))?.stop();
  process.exit(code);
}
// Before anything is started, so a signal at any point stops what is running.
process.on('SIGINT', () => void stopAll(0));
process.on('SIGTERM', () => void stopAll(0));
// The children are out of the terminal's process group, so a closed terminal's hang-up reaches only this script.
process.on('SIGHUP', () => void stopAll(0));

let redisUrl = process.env.REDIS_URL;
if (redisUrl) {
  console.log(`[run] Redis: ${withoutPassword(redisUrl)} from REDIS_URL (not started by make run, left running on exit)`);
} else {
  if (!redisServerAvailable()) {
    console.error(`[run] ${INSTALL_HINT}`);
    process.exit(1);
  }
  const port = Number(process.env.REDIS_PORT ?? DEFAULT_REDIS_PORT);
  if (!Number.isInteger(port) || port < 1 || port > 65_535) {
    console.error(`[run] REDIS_PORT must be a TCP port (1-65535), got ${JSON.stringify(process.env.REDIS_PORT)}`);
    process.exit(1);
  }
  // A taken port is refused, not dodged onto a free one. The usual occupant is a system Redis
  // (installed with redis-server, which Debian starts on 6379) or another `make run` of this tree:
  // a free port would put a second server on the same ./data/redis in the second case, and in
  // both the port would change from run to run behind the back of redis-cli, the README and any
  // tool pointed at 6379. Saying what is there and how to choose takes the user one line.
  try {
    // Every child runs in a process group of its own: a Ctrl-C reaches only this script, which stops
    // them in order (gateway, workers, monitor, Redis last), instead of all at once.
    const maxMemory = process.env.REDIS_MAXMEMORY ?? '1gb';
    redis = startRedis({ dir: path.join(ROOT, 'data', 'redis'), persist: true, port, detached: true, maxMemory });
    const started = await redis;
    redisUrl = started.url;
    console.log(
      `[run] Redis: ${redisUrl}, started by make run (redis-server pid ${started.pid}, data in data/redis, maxmemory ${maxMemory} noeviction, stopped on exit)`,
    );
  } catch (error) {
    if (!(error instanceof PortInUseError)) {
      console.error(`[run] could not start redis-server: ${error instanceof Error ? error.message : String(error)}`);
      process.exit(1);
    }
    const other = await suggestPort(port);
    const { description, redis: isRedis } = error.occupant;
    console.error(
      [
        `[run] Redis port ${port} is already in use by ${description}.`,
        '[run] make run starts a Redis of its own (data in data/redis) and does not use one it did not start. Either:',
        ...(isRedis ? [`[run]   use that Redis on purpose:     REDIS_URL=redis://127.0.0.1:${port} make run`] : []),
        `[run]   start its own on another port: REDIS_PORT=${other} make run`,
        isRedis
          ? '[run]   or stop that Redis (a system one: sudo systemctl stop redis-server, or sudo service redis-server stop)'
          : `[run]   or stop the process on port ${port}`,
      ].join('\n'),
    );
    process.exit(1);
  }
}

/** For the log: a password in REDIS_URL stays out of the terminal's scrollback. */
function withoutPassword(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return '(REDIS_URL is not a valid URL)';
  }
}

/** The next port after `port` that nothing listens on, for the hint; else one the OS picks. */
async function suggestPort(port: number): Promise<number> {
  for (let candidate = port + 1; candidate <= Math.min(port + 20, 65_535); candidate++) {
    if (!(await portOccupant(candidate))) return candidate;
  }
  return freePort();
}

const colours = ['\x1b[36m', '\x1b[35m', '\x1b[33m', '\x1b[32m', '\x1b[34m'];
const reset = '\x1b[0m';
const tty = process.stdout.isTTY;
// In a terminal, JSON lines are made readable; piped elsewhere they stay JSON for tools.
const pretty = tty ? prettyFactory({ colorize: true, translateTime: 'HH:MM:ss.l', ignore: 'pid,hostname,service' }) : undefined;
const launch = (
  service: 'gateway' | 'inference-worker' | 'monitor',
  label: string,
  index: number,
  env: Record<string, string> = {},
) => {
  const prefix = tty ? `${colours[index % colours.length]}[${label}]${reset}` : `[${label}]`;
  const proc = spawnService(
    service,
    { REDIS_URL: redisUrl, ...env },
    {
      label,
      built: true,
      detached: true,
      // Printed as they come; only recent ones are needed (for waitFor), not hours of them.
      keep: 1000,
      onRecord: (record, raw) => console.log(`${prefix} ${pretty && record.level ? pretty(raw).trimEnd() : raw}`),
    },
  );
  services.push(proc);
  if (service === 'inference-worker') {
    // The port the worker actually bound (METRICS_PORT=0 included), not the one asked for.
    void proc
      .waitFor((r) => r.msg === 'metrics listening', 120_000)
      .then(
        (r) => console.log(`[run] ${label} metrics: ${String(r.url)}`),
        () => undefined,
      );
  }
  void proc.exited.then((code) => {
    if (!stopping) {
      console.error(`[run] ${label} exited with ${code}; stopping everything`);
      void stopAll(1);
    }
  });
};
// Not once stopping: a signal while Redis was starting.
if (!stopping) {
  for (let i = 0; i < workerCount; i++) {
    const port = metricsBase === 0 ? 0 : metricsBase + i;
    launch('inference-worker', workerCount > 1 ? `worker-${i + 1}` : 'worker', i + 1, { METRICS_PORT: String(port) });
  }
  launch('gateway', 'gateway', 0, {
    ...callbackSecret(),
    // The page at / shows the drift state of the monitor started here.
    MONITOR_URL: process.env.MONITOR_URL ?? `http://127.0.0.1:${process.env.MONITOR_PORT ?? '9100'}`,
  });
  launch('monitor', 'monitor', workerCount + 1);
  const [first] = models;
  console.log(
    `[run] models: ${models.map((m) => m.name).join(', ')} (each worker serves ${models.length === 1 ? 'it' : 'all of them'}); ` +
      `POST /v1/models/<name>/predict, GET /v1/models${first ? `; e.g. curl -F file=@docs/examples/seven.png localhost:${process.env.PORT ?? '8080'}/v1/models/${first.name}/predict` : ''}`,
  );
}

/**
 * Callbacks need a signing secret: CALLBACK_SECRET when set, else one made once and kept in
 * data/callback-secret (mode 600), so receivers can verify what `make run` sends across restarts.
 */
function callbackSecret(): Record<string, string> {
  if (process.env.CALLBACK_SECRET) return {};
  const file = path.join(ROOT, 'data', 'callback-secret');
  if (!existsSync(file)) {
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, `whsec_${randomBytes(32).toString('base64')}\n`, { mode: 0o600 });
  }
  console.log(`[run] callbacks are signed with the secret in ${path.relative(ROOT, file)} (CALLBACK_SECRET=… for another)`);
  return { CALLBACK_SECRET: readFileSync(file, 'utf8').trim() };
}
