import path from 'node:path';
import { prettyFactory } from 'pino-pretty';
import { parseArgs } from 'node:util';
import { INSTALL_HINT, redisServerAvailable, startRedis, type LocalRedis } from './lib/redis-server.js';
import { ROOT, spawnService, type ServiceProcess } from './lib/service-process.js';

/**
 * `make run`: the gateway, the inference workers and the drift monitor in the foreground, every log line prefixed with
 * its process. Redis comes from REDIS_URL, else a local redis-server is started with its data in
 * ./data/redis and stopped on exit. Ctrl-C or SIGTERM stops everything in order.
 */
const { values } = parseArgs({ options: { workers: { type: 'string', default: process.env.WORKERS ?? '1' } } });
const workerCount = Math.max(1, Number(values.workers) || 1);

let redis: LocalRedis | undefined;
let redisUrl = process.env.REDIS_URL;
if (!redisUrl) {
  if (!redisServerAvailable()) {
    console.error(`[run] ${INSTALL_HINT}`);
    process.exit(1);
  }
  // Every child runs in a process group of its own: a Ctrl-C reaches only this script, which stops
  // them in order (gateway, workers, monitor, Redis last), instead of all at once.
  redis = await startRedis({
    dir: path.join(ROOT, 'data', 'redis'),
    persist: true,
    port: Number(process.env.REDIS_PORT ?? 6379),
    detached: true,
  }).catch(async () => startRedis({ dir: path.join(ROOT, 'data', 'redis'), persist: true, detached: true }));
  redisUrl = redis.url;
  console.log(`[run] started redis-server at ${redisUrl} (data in data/redis)`);
}

const colours = ['\x1b[36m', '\x1b[35m', '\x1b[33m', '\x1b[32m', '\x1b[34m'];
const reset = '\x1b[0m';
const tty = process.stdout.isTTY;
// In a terminal, JSON lines are made readable; piped elsewhere they stay JSON for tools.
const pretty = tty ? prettyFactory({ colorize: true, translateTime: 'HH:MM:ss.l', ignore: 'pid,hostname,service' }) : undefined;
const services: ServiceProcess[] = [];
const launch = (service: 'gateway' | 'inference-worker' | 'monitor', label: string, index: number) => {
  const prefix = tty ? `${colours[index % colours.length]}[${label}]${reset}` : `[${label}]`;
  const proc = spawnService(
    service,
    { REDIS_URL: redisUrl },
    {
      label,
      built: true,
      detached: true,
      onRecord: (record, raw) => console.log(`${prefix} ${pretty && record.level ? pretty(raw).trimEnd() : raw}`),
    },
  );
  services.push(proc);
  void proc.exited.then((code) => {
    if (!stopping) {
      console.error(`[run] ${label} exited with ${code}; stopping everything`);
      void stopAll(1);
    }
  });
};
for (let i = 0; i < workerCount; i++) launch('inference-worker', workerCount > 1 ? `worker-${i + 1}` : 'worker', i + 1);
launch('gateway', 'gateway', 0);
launch('monitor', 'monitor', workerCount + 1);

let stopping = false;
async function stopAll(code: number): Promise<void> {
  if (stopping) return;
  stopping = true;
  console.log('[run] stopping…');
  // Gateway first (no new work), then workers (they drain), then the monitor, then Redis.
  await services.find((s) => s.name === 'gateway')?.stop('SIGTERM');
  await Promise.all(services.filter((s) => s.name !== 'gateway' && s.name !== 'monitor').map((s) => s.stop('SIGTERM')));
  await services.find((s) => s.name === 'monitor')?.stop('SIGTERM');
  await redis?.stop();
  process.exit(code);
}
process.on('SIGINT', () => void stopAll(0));
process.on('SIGTERM', () => void stopAll(0));
// The children are out of the terminal's process group, so a closed terminal's hang-up reaches only this script.
process.on('SIGHUP', () => void stopAll(0));
