import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { freePort } from './free-port.js';
import { ROOT } from './service-process.js';

/**
 * A real MLflow tracking server (Python, pinned, in the project's own virtual environment) with a
 * SQLite backend store and artifacts served through the server's proxy — for `make mlflow`,
 * `make train` and the tests.
 */
export interface LocalMlflow {
  readonly url: string;
  readonly port: number;
  stop(): Promise<void>;
}

export function ensureMlflowInstalled(): string {
  const result = spawnSync('bash', [path.join(ROOT, 'scripts/mlflow/ensure-venv.sh')], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  if (result.status !== 0) throw new Error('could not install MLflow (scripts/mlflow/ensure-venv.sh failed)');
  return result.stdout.trim();
}

export async function startMlflow(options: { dir: string; port?: number; host?: string; quiet?: boolean }): Promise<LocalMlflow> {
  const mlflow = ensureMlflowInstalled();
  mkdirSync(options.dir, { recursive: true });
  const port = options.port ?? (await freePort());
  const host = options.host ?? '127.0.0.1';
  const child: ChildProcess = spawn(
    mlflow,
    [
      'server',
      '--host',
      host,
      '--port',
      String(port),
      '--workers',
      '1',
      '--backend-store-uri',
      `sqlite:///${path.resolve(options.dir, 'mlflow.db')}`,
      '--artifacts-destination',
      path.resolve(options.dir, 'artifacts'),
      '--serve-artifacts',
    ],
    {
      cwd: options.dir,
      stdio: ['ignore', options.quiet ? 'ignore' : 'inherit', options.quiet ? 'pipe' : 'inherit'],
      env: { ...process.env, MLFLOW_TRACKING_URI: '' },
    },
  );
  const errors: string[] = [];
  child.stderr?.on('data', (d: Buffer) => errors.push(d.toString()));
  const url = `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${port}`;
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  };
  for (let i = 0; i < 600; i++) {
    if (child.exitCode !== null) throw new Error(`mlflow server exited with ${child.exitCode}:\n${errors.join('').slice(-3000)}`);
    const ok = await fetch(`${url}/health`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) return { url, port, stop };
    await new Promise((r) => setTimeout(r, 200));
  }
  await stop();
  throw new Error(`mlflow server did not answer /health within 120 s:\n${errors.join('').slice(-3000)}`);
}
