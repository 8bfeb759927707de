import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startRedis, type LocalRedis } from '../../harness/redis-server.js';
import { stopSharedMlflow } from './mlflow.js';

/**
 * One real redis-server for the whole run, on a free port, started by the test command itself
 * (and, on first use, one real MLflow server: see mlflow.ts).
 * Suites isolate themselves with a random REDIS_PREFIX. Without redis-server the run fails loudly
 * (it is never skipped): `.ci/run` installs it on a bare machine.
 */
let redis: LocalRedis | undefined;
let dir: string | undefined;

export async function mochaGlobalSetup(): Promise<void> {
  // CI may provide a Redis service container instead: suites isolate themselves by prefix anyway.
  if (process.env.CONVEYOR_TEST_REDIS_URL) return;
  dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-test-redis-'));
  redis = await startRedis({ dir });
  process.env.CONVEYOR_TEST_REDIS_URL = redis.url;
}

export async function mochaGlobalTeardown(): Promise<void> {
  await stopSharedMlflow();
  await redis?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
}
