import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startMlflow, type LocalMlflow } from '../../scripts/lib/mlflow-server.js';

/**
 * One real MLflow tracking server per test run, started on first use (on a free port, with its
 * own SQLite store and artifact folder) and stopped by the global fixture's teardown — or the one
 * at CONVEYOR_TEST_MLFLOW_URL (suites use their own experiment and model names).
 */
let server: Promise<LocalMlflow> | undefined;
let dir: string | undefined;

export function sharedMlflow(): Promise<LocalMlflow> {
  const external = process.env.CONVEYOR_TEST_MLFLOW_URL;
  if (external) return Promise.resolve({ url: external, port: Number(new URL(external).port), stop: () => Promise.resolve() });
  if (!server) {
    dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-test-mlflow-'));
    server = startMlflow({ dir, quiet: true });
  }
  return server;
}

export async function stopSharedMlflow(): Promise<void> {
  if (server) await (await server).stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
}
