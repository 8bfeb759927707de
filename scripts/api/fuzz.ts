/**
 * `make api-fuzz`: Schemathesis (pinned in .venv/api-tests) with every check against a whole system
 * of its own: a private redis-server, the gateway and a worker, on free ports, from the sources.
 * Its configuration, and why any check is tuned, is test/api/schemathesis.toml. Exits with
 * Schemathesis's code (0: nothing found beyond what the document says).
 *
 * Run it through scripts/api/fuzz.sh, which puts it in a network namespace of its own with only a
 * loopback interface: the fuzzer sends image URLs of its own invention, and the gateway fetches
 * them, so nothing it invents may reach another machine.
 *
 *   fuzz.ts [--venv DIR] [-- extra `st run` arguments]
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startRedis } from '../../harness/redis-server.js';
import { ROOT, spawnService } from '../../harness/service-process.js';

const args = process.argv.slice(2);
const dash = args.indexOf('--');
const extra = dash >= 0 ? args.slice(dash + 1) : [];
const venvAt = args.indexOf('--venv');
const venv = venvAt >= 0 ? args[venvAt + 1]! : path.join(ROOT, '.venv/api-tests');

const dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-fuzz-'));
const redis = await startRedis({ dir });
const env = { REDIS_URL: redis.url, REDIS_PREFIX: 'fuzz', LOG_LEVEL: 'info' };
const gateway = spawnService('gateway', { ...env, PORT: '0', HOST: '127.0.0.1' }, { keep: 500 });
const worker = spawnService('inference-worker', { ...env, HEARTBEAT_INTERVAL_MS: '500' }, { keep: 500 });
let code: number;
try {
  const [listening] = await Promise.all([
    gateway.waitFor((r) => r.msg === 'gateway listening', 180_000),
    worker.waitFor((r) => r.msg === 'worker ready', 180_000),
  ]);
  const url = `http://127.0.0.1:${String(listening.port)}`;
  const st = spawn(
    path.join(venv, 'bin/st'),
    ['--config-file', path.join(ROOT, 'test/api/schemathesis.toml'), 'run', `${url}/openapi.json`, ...extra],
    { stdio: 'inherit', cwd: dir, env: { ...process.env, SCHEMATHESIS_HOOKS: '' } },
  );
  code = await new Promise<number>((resolve) => st.once('exit', (c) => resolve(c ?? 1)));
  const crashed = [gateway, worker].filter((p) => p.child.exitCode !== null);
  if (crashed.length > 0) {
    console.error(`fuzz: ${crashed.map((p) => p.name).join(', ')} exited during the run`);
    code = 1;
  }
} finally {
  await Promise.all([gateway.stop('SIGTERM'), worker.stop('SIGTERM')]);
  await redis.stop();
  rmSync(dir, { recursive: true, force: true });
}
process.exit(code);
