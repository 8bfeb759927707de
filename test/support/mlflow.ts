import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startMlflow, type LocalMlflow } from '../../harness/mlflow-server.js';

/**
 * One real MLflow tracking server per test run, started on first use (on a free port, with its
 * own SQLite store and artifact folder) and stopped by the global fixture's teardown — or the one
 * at CONVEYOR_TEST_MLFLOW_URL (suites use their own experiment and model names).
 */
/*
 * The state lives on globalThis, not in module variables: a spec that imports a module with
 * top-level await is loaded by mocha as ESM and gets its own copy of this file, and the global
 * fixture's teardown (loaded as CommonJS) would never see — or stop — a server that copy started,
 * leaving mocha hanging after "passing".
 */
interface SharedState {
  server?: Promise<LocalMlflow>;
  dir?: string;
}
const state: SharedState = ((globalThis as { [key: symbol]: SharedState | undefined })[
  Symbol.for('conveyor.test.sharedMlflow')
] ??= {});

export function sharedMlflow(): Promise<LocalMlflow> {
  const external = process.env.CONVEYOR_TEST_MLFLOW_URL;
  if (external) return Promise.resolve({ url: external, port: Number(new URL(external).port), stop: () => Promise.resolve() });
  if (!state.server) {
    state.dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-test-mlflow-'));
    state.server = startMlflow({ dir: state.dir, quiet: true });
  }
  return state.server;
}

export async function stopSharedMlflow(): Promise<void> {
  const { server, dir } = state;
  state.server = undefined;
  state.dir = undefined;
  if (server) await (await server).stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
}
