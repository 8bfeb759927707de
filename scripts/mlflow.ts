import path from 'node:path';
import { artifactStoreFromEnv, localMlflowAuth, startMlflow } from '../harness/mlflow-server.js';
import { ROOT } from '../harness/service-process.js';

/**
 * `make mlflow`: the tracking server and UI in the foreground, data in ./data/mlflow. Without
 * authentication (local development) it listens on the loopback only: whoever can reach the
 * registry can register a version and move `production`. `MLFLOW_AUTH=1 make mlflow` runs MLflow's
 * basic-auth app, as compose does (accounts: harness/mlflow-server.ts). Artifacts go to an S3
 * bucket with MLFLOW_ARTIFACTS_DESTINATION=s3://…, or to a local versioned moto bucket with
 * MLFLOW_S3=1 (artifactStoreFromEnv).
 */
const port = Number(process.env.MLFLOW_PORT ?? 5000);
const host = process.env.MLFLOW_HOST ?? '127.0.0.1';
const local = localMlflowAuth();
if (!local && !/^(127\.\d+\.\d+\.\d+|localhost|::1)$/.test(host)) {
  console.error(
    `[mlflow] not listening on ${host} without authentication (anyone reaching it could choose what the workers serve): ` +
      `MLFLOW_AUTH=1 MLFLOW_HOST=${host} make mlflow`,
  );
  process.exit(2);
}
const store = await artifactStoreFromEnv();
const server = await startMlflow({ dir: store.dir, port, host, auth: local?.auth, artifacts: store.artifacts }).catch(
  async (error: unknown) => {
    await store.stop();
    throw error;
  },
);
console.log(`[mlflow] tracking server and UI at http://${host}:${port} (Ctrl-C stops it)`);
console.log(
  `[mlflow] artifacts: ${store.description}; tracking store: ${store.dir.startsWith(ROOT + path.sep) ? path.relative(ROOT, store.dir) : store.dir}`,
);
if (local) {
  const rel = (file: string) => path.relative(ROOT, file);
  console.log(
    `[mlflow] authentication on (MLflow basic-auth, default permission READ):\n` +
      `[mlflow]   trainer (make train/promote/rollback use it by themselves): MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD_FILE=${rel(local.adminPasswordFile)}\n` +
      (local.readerPasswordFile
        ? `[mlflow]   workers and monitor (read-only): MLFLOW_TRACKING_USERNAME=reader MLFLOW_TRACKING_PASSWORD_FILE=${rel(local.readerPasswordFile)}`
        : '[mlflow]   no read-only account (MLFLOW_READER_PASSWORD_FILE unset)'),
  );
}
const stop = () =>
  void server
    .stop()
    .then(() => store.stop())
    .then(() => process.exit(0));
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
