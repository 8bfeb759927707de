import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import {
  artifactStoreFromEnv,
  LOCAL_AUTH_DIR,
  localMlflowAuth,
  requiresAuth,
  startMlflow,
  type ArtifactStoreChoice,
  type LocalAuthFiles,
  type LocalMlflow,
} from '../harness/mlflow-server.js';
import { ROOT } from '../harness/service-process.js';

/**
 * `with-mlflow <command…>`: runs a command with MLFLOW_TRACKING_URI set. A configured
 * MLFLOW_TRACKING_URI is used as it is (with the caller's MLFLOW_TRACKING_USERNAME/_PASSWORD_FILE);
 * else a server already answering on MLFLOW_PORT (e.g. from `make mlflow`) is reused; else a local
 * one (data in ./data/mlflow) is started for the duration, with authentication under MLFLOW_AUTH=1
 * or MLFLOW_ADMIN_PASSWORD_FILE, and its artifacts where MLFLOW_ARTIFACTS_DESTINATION or MLFLOW_S3=1
 * say (harness/mlflow-server.ts, artifactStoreFromEnv). For a local server the command gets the admin's credentials (the
 * trainer registers versions and moves aliases) unless the caller set an account of its own.
 */
const [command, ...args] = process.argv.slice(2);
if (!command) {
  console.error('usage: with-mlflow <command> [args…]');
  process.exit(2);
}
const port = Number(process.env.MLFLOW_PORT ?? 5000);
let server: LocalMlflow | undefined;
let store: ArtifactStoreChoice | undefined;
let uri = process.env.MLFLOW_TRACKING_URI;
const env: NodeJS.ProcessEnv = { ...process.env };
/** The local admin for the command: its password as a file, the one way the trainer then gets it. */
const useAdmin = (files: LocalAuthFiles) => {
  env.MLFLOW_TRACKING_USERNAME = files.auth.admin.username;
  env.MLFLOW_TRACKING_PASSWORD_FILE = files.adminPasswordFile;
  delete env.MLFLOW_TRACKING_PASSWORD;
};
if (!uri) {
  const local = `http://127.0.0.1:${port}`;
  const auth = localMlflowAuth();
  if (
    await fetch(`${local}/health`).then(
      (r) => r.ok,
      () => false,
    )
  ) {
    uri = local;
    if (!env.MLFLOW_TRACKING_USERNAME && (auth || (await requiresAuth(local)))) {
      // `MLFLOW_AUTH=1 make mlflow` in another terminal: its admin's password is in data/mlflow/auth/.
      // Not made up here when missing: the server may be another one (compose's, on the same port).
      const files =
        auth ?? (existsSync(path.join(LOCAL_AUTH_DIR, 'admin.password')) ? localMlflowAuth({ MLFLOW_AUTH: '1' }) : undefined);
      if (!files) {
        console.error(
          `[with-mlflow] the MLflow on ${local} requires authentication: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD_FILE ` +
            "(compose's: the admin, with MLFLOW_ADMIN_PASSWORD of .env)",
        );
        process.exit(2);
      }
      useAdmin(files);
    }
  } else {
    store = await artifactStoreFromEnv();
    console.error(
      `[with-mlflow] starting MLflow on ${local} (tracking store ${store.dir.startsWith(ROOT + path.sep) ? path.relative(ROOT, store.dir) : store.dir}, artifacts ${store.description}${auth ? ', with authentication' : ''})…`,
    );
    server = await startMlflow({ dir: store.dir, port, quiet: true, auth: auth?.auth, artifacts: store.artifacts });
    uri = server.url;
    if (auth && !env.MLFLOW_TRACKING_USERNAME) useAdmin(auth);
  }
}
const child = spawn(command, args, { stdio: 'inherit', env: { ...env, MLFLOW_TRACKING_URI: uri } });
const forward = (signal: NodeJS.Signals) => child.kill(signal);
process.on('SIGINT', forward);
process.on('SIGTERM', forward);
const code = await new Promise<number>((resolve) => child.on('exit', (c, signal) => resolve(c ?? (signal ? 1 : 0))));
await server?.stop();
await store?.stop();
process.exit(code);
