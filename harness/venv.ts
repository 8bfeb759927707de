import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { ROOT } from './service-process.js';

/** The project's pinned Python environments (requirements/NAME.lock.txt → .venv/NAME; `harness/venv.sh --list`). */
export type VenvName =
  'api-tests' | 'bench-bentoml' | 'bench-fastapi' | 'k8s' | 'loadtests' | 'mlflow' | 'models' | 'prefect' | 's3';

/**
 * Creates or reuses the pinned venv `name` (harness/venv.sh, idempotent; its install output goes to
 * this process's stderr) and returns its directory.
 */
export function ensureVenv(name: VenvName): string {
  const result = spawnSync('bash', [path.join(ROOT, 'harness', 'venv.sh'), name], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  if (result.status !== 0)
    throw new Error(`could not set up .venv/${name} (harness/venv.sh ${name} exited ${String(result.status)})`);
  return result.stdout.trim().split('\n').at(-1)!;
}

/** A program of the venv `name` (`python`, `mlflow`, `prefect`…), installing the venv first if needed. */
export function venvBin(name: VenvName, program: string): string {
  return path.join(ensureVenv(name), 'bin', program);
}
