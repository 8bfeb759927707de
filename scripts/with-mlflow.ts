import { spawn } from 'node:child_process';
import path from 'node:path';
import { startMlflow, type LocalMlflow } from './lib/mlflow-server.js';
import { ROOT } from './lib/service-process.js';

/**
 * `with-mlflow <command…>`: runs a command with MLFLOW_TRACKING_URI set. A configured
 * MLFLOW_TRACKING_URI is used as it is; else a server already answering on MLFLOW_PORT (e.g. from
 * `make mlflow`) is reused; else a local one (data in ./data/mlflow) is started for the duration.
 */
const [command, ...args] = process.argv.slice(2);
if (!command) {
  console.error('usage: with-mlflow <command> [args…]');
  process.exit(2);
}
const port = Number(process.env.MLFLOW_PORT ?? 5000);
let server: LocalMlflow | undefined;
let uri = process.env.MLFLOW_TRACKING_URI;
if (!uri) {
  const local = `http://127.0.0.1:${port}`;
  if (
    await fetch(`${local}/health`).then(
      (r) => r.ok,
      () => false,
    )
  ) {
    uri = local;
  } else {
    console.error(`[with-mlflow] starting MLflow on ${local} (data in data/mlflow)…`);
    server = await startMlflow({ dir: path.join(ROOT, 'data', 'mlflow'), port, quiet: true });
    uri = server.url;
  }
}
const child = spawn(command, args, { stdio: 'inherit', env: { ...process.env, MLFLOW_TRACKING_URI: uri } });
const forward = (signal: NodeJS.Signals) => child.kill(signal);
process.on('SIGINT', forward);
process.on('SIGTERM', forward);
const code = await new Promise<number>((resolve) => child.on('exit', (c, signal) => resolve(c ?? (signal ? 1 : 0))));
await server?.stop();
process.exit(code);
