import path from 'node:path';
import { startMlflow } from './lib/mlflow-server.js';
import { ROOT } from './lib/service-process.js';

/** `make mlflow`: the tracking server and UI in the foreground, data in ./data/mlflow. */
const port = Number(process.env.MLFLOW_PORT ?? 5000);
const host = process.env.MLFLOW_HOST ?? '127.0.0.1';
const server = await startMlflow({ dir: path.join(ROOT, 'data', 'mlflow'), port, host });
console.log(`[mlflow] tracking server and UI at http://${host}:${port} (Ctrl-C stops it)`);
const stop = () => void server.stop().then(() => process.exit(0));
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
