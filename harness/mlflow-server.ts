import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readSecretFile } from '@conveyor/shared/config';
import type { MlflowCredentials } from '@conveyor/shared/mlflow/client';
import { freePort } from './free-port.js';
import type { S3Credentials } from './s3-server.js';
import { ROOT } from './service-process.js';
import { venvBin } from './venv.js';

/**
 * A real MLflow tracking server (Python, pinned, in the project's own virtual environment) with a
 * SQLite backend store and artifacts served through the server's proxy — for `make mlflow`,
 * `make train` and the tests. Artifacts go to `<dir>/artifacts`, or with `artifacts` to an S3
 * bucket that only the server talks to: clients (the trainer, the workers, the monitor) still up-
 * and download through the server and need no S3 credentials. With `auth`, it runs MLflow's
 * basic-auth app (scripts/mlflow/basic-auth.ini) with an admin and a READ-only reader that cannot
 * change any account, its own password included (scripts/mlflow/conveyor_auth.py), as the compose
 * image does.
 */
export interface LocalMlflow {
  readonly url: string;
  readonly port: number;
  readonly auth?: MlflowAuth | undefined;
  /** Where the server writes artifacts: a folder, or `s3://<bucket>/<prefix>` (unknown for a server started elsewhere). */
  readonly artifactsDestination?: string | undefined;
  /** The server process (the tests read its environment). */
  readonly pid?: number | undefined;
  stop(): Promise<void>;
}

/** MLflow's artifact store in an S3 bucket (`mlflow server --artifacts-destination s3://…`). */
export interface S3ArtifactStore {
  /** `s3://<bucket>/<prefix>`: every run's artifacts under `<prefix>/<experiment id>/<run id>/artifacts/`. */
  readonly destination: string;
  /** An S3-compatible server (MLFLOW_S3_ENDPOINT_URL, e.g. moto in the tests); undefined: AWS's own endpoint. */
  readonly endpointUrl?: string | undefined;
  /**
   * Given: these and nothing inherited (the tests' random ones). Undefined: boto3's usual chain from
   * the caller's environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, the instance's
   * or task's role).
   */
  readonly credentials?: S3Credentials | undefined;
  readonly region?: string | undefined;
}

export interface MlflowAuth {
  /** An MLflow admin: the trainer's account, the only one that registers versions and moves aliases. */
  readonly admin: MlflowCredentials;
  /** Reads everything (`default_permission = READ`), changes nothing: the workers' and the monitor's. */
  readonly reader?: MlflowCredentials | undefined;
}

export const AUTH_CONFIG = path.join(ROOT, 'scripts/mlflow/basic-auth.ini');
const AUTH_MODULE_DIR = path.join(ROOT, 'scripts/mlflow');
const PROVISION = path.join(ROOT, 'scripts/mlflow/provision-auth.py');

/** The pinned MLflow server's executable (.venv/mlflow, installed once per change of its lock). */
export function ensureMlflowInstalled(): string {
  return venvBin('mlflow', 'mlflow');
}

export async function startMlflow(options: {
  dir: string;
  port?: number;
  host?: string;
  quiet?: boolean;
  auth?: MlflowAuth | undefined;
  artifacts?: S3ArtifactStore | undefined;
}): Promise<LocalMlflow> {
  const mlflow = ensureMlflowInstalled();
  mkdirSync(options.dir, { recursive: true });
  const port = options.port ?? (await freePort());
  const host = options.host ?? '127.0.0.1';
  const { auth, artifacts } = options;
  if (artifacts && !/^s3:\/\/[^/]+/.test(artifacts.destination))
    throw new Error(`artifacts destination ${artifacts.destination} is not s3://<bucket>[/<prefix>]`);
  // Nothing of the caller's MLflow settings may leak into the server (a tracking URI would make it
  // a client of another server; a bootstrap password would sit in its environment for nothing; an
  // S3 endpoint would redirect a store it was not meant for). Given credentials of its own, nothing
  // of the caller's AWS settings either: a profile or session token from the shell would be mixed
  // with another account's keys. Without, boto3 finds the caller's as usual (AWS_*, a role).
  const inherited = (key: string) =>
    !/^MLFLOW_(AUTH_|TRACKING_USERNAME|TRACKING_PASSWORD|S3_ENDPOINT_URL)/.test(key) &&
    !(artifacts?.credentials && key.startsWith('AWS_'));
  const env: NodeJS.ProcessEnv = {
    ...Object.fromEntries(Object.entries(process.env).filter(([key]) => inherited(key))),
    MLFLOW_TRACKING_URI: '',
    ...(artifacts?.endpointUrl ? { MLFLOW_S3_ENDPOINT_URL: artifacts.endpointUrl } : {}),
    ...(artifacts?.credentials
      ? { AWS_ACCESS_KEY_ID: artifacts.credentials.accessKeyId, AWS_SECRET_ACCESS_KEY: artifacts.credentials.secretAccessKey }
      : {}),
    ...(artifacts?.region ? { AWS_DEFAULT_REGION: artifacts.region } : {}),
  };
  const artifactsDestination = artifacts?.destination ?? path.resolve(options.dir, 'artifacts');
  const appArgs: string[] = [];
  if (auth) {
    Object.assign(env, {
      MLFLOW_AUTH_CONFIG_PATH: AUTH_CONFIG,
      // The INI's authorization_function (conveyor_auth.py) is imported from here.
      PYTHONPATH: [AUTH_MODULE_DIR, process.env.PYTHONPATH].filter(Boolean).join(path.delimiter),
      MLFLOW_AUTH_ADMIN_USERNAME: auth.admin.username,
      // CSRF protection of the UI's sign-up form; one server process, so a key per start will do.
      MLFLOW_FLASK_SERVER_SECRET_KEY: randomBytes(32).toString('hex'),
    });
    provisionAccounts(path.join(path.dirname(mlflow), 'python'), options.dir, env, auth);
    appArgs.push('--app-name', 'basic-auth');
  }
  const child: ChildProcess = spawn(
    mlflow,
    [
      'server',
      ...appArgs,
      '--host',
      host,
      '--port',
      String(port),
      '--workers',
      '1',
      '--backend-store-uri',
      `sqlite:///${path.resolve(options.dir, 'mlflow.db')}`,
      '--artifacts-destination',
      artifactsDestination,
      // The server proxies every artifact request: clients never see the bucket or its keys.
      '--serve-artifacts',
    ],
    {
      // The auth INI's database is relative to the working directory: it lives beside mlflow.db.
      cwd: options.dir,
      stdio: ['ignore', options.quiet ? 'ignore' : 'inherit', options.quiet ? 'pipe' : 'inherit'],
      env,
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
    // /health is open even with the basic-auth app (compose's health check relies on it too).
    const ok = await fetch(`${url}/health`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) return { url, port, auth, artifactsDestination, pid: child.pid, stop };
    await new Promise((r) => setTimeout(r, 200));
  }
  await stop();
  throw new Error(`mlflow server did not answer /health within 120 s:\n${errors.join('').slice(-3000)}`);
}

/** Puts the accounts into the auth database before the server starts (scripts/mlflow/provision-auth.py). */
function provisionAccounts(python: string, dir: string, env: NodeJS.ProcessEnv, auth: MlflowAuth): void {
  const result = spawnSync(python, [PROVISION], {
    cwd: dir,
    encoding: 'utf8',
    stdio: ['ignore', 'ignore', 'pipe'],
    // Only this short-lived process sees the passwords.
    env: {
      ...env,
      MLFLOW_AUTH_ADMIN_PASSWORD: auth.admin.password,
      ...(auth.reader
        ? { MLFLOW_AUTH_READER_USERNAME: auth.reader.username, MLFLOW_AUTH_READER_PASSWORD: auth.reader.password }
        : {}),
    },
  });
  if (result.status !== 0) throw new Error(`could not set up MLflow's accounts:\n${result.stderr.slice(-2000)}`);
}

/** The accounts of a local server with authentication, and the files their passwords are in. */
export interface LocalAuthFiles {
  readonly auth: MlflowAuth;
  readonly adminPasswordFile: string;
  readonly readerPasswordFile?: string | undefined;
}

export const LOCAL_AUTH_DIR = path.join(ROOT, 'data', 'mlflow', 'auth');

/**
 * From the environment of `make mlflow` and `make train`/`promote`/`rollback`: authentication is
 * on with MLFLOW_AUTH=1 (passwords in data/mlflow/auth/, made on first use) or when
 * MLFLOW_ADMIN_PASSWORD_FILE names an existing secret (then a reader exists only with
 * MLFLOW_READER_PASSWORD_FILE). Undefined: no authentication, as local development has always run
 * (on 127.0.0.1 only: scripts/mlflow.ts refuses anything wider without it).
 */
export function localMlflowAuth(env: NodeJS.ProcessEnv = process.env): LocalAuthFiles | undefined {
  const on = env.MLFLOW_AUTH === '1' || env.MLFLOW_AUTH === 'true';
  if (!on && !env.MLFLOW_ADMIN_PASSWORD_FILE) return undefined;
  const adminPasswordFile = env.MLFLOW_ADMIN_PASSWORD_FILE ?? generatedSecret('admin.password');
  const readerPasswordFile =
    env.MLFLOW_READER_PASSWORD_FILE ?? (env.MLFLOW_ADMIN_PASSWORD_FILE ? undefined : generatedSecret('reader.password'));
  const read = (file: string, key: string) => {
    try {
      return readSecretFile(file);
    } catch (error) {
      throw new Error(`${key} (${file}): ${(error as Error).message}`, { cause: error });
    }
  };
  return {
    adminPasswordFile: path.resolve(adminPasswordFile),
    ...(readerPasswordFile ? { readerPasswordFile: path.resolve(readerPasswordFile) } : {}),
    auth: {
      admin: { username: 'admin', password: read(adminPasswordFile, 'MLFLOW_ADMIN_PASSWORD_FILE') },
      ...(readerPasswordFile
        ? { reader: { username: 'reader', password: read(readerPasswordFile, 'MLFLOW_READER_PASSWORD_FILE') } }
        : {}),
    },
  };
}

/** A random password in data/mlflow/auth/<name>, made once and kept (readable by this user only). */
function generatedSecret(name: string): string {
  const file = path.join(LOCAL_AUTH_DIR, name);
  if (existsSync(file)) return file;
  mkdirSync(LOCAL_AUTH_DIR, { recursive: true, mode: 0o700 });
  try {
    writeFileSync(file, `${randomBytes(24).toString('base64url')}\n`, { mode: 0o600, flag: 'wx' });
  } catch (error) {
    // Another make target made it first: its password is the one.
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  }
  return file;
}

/**
 * Whether the server at `url` refuses requests without credentials: MLflow's basic-auth app
 * answers 401 to any API call, a server without it answers 200.
 */
export async function requiresAuth(url: string): Promise<boolean> {
  const response = await fetch(`${url}/api/2.0/mlflow/experiments/search?max_results=1`);
  await response.body?.cancel();
  return response.status === 401;
}

/** Where a local server's artifacts go, chosen from the environment (artifactStoreFromEnv). */
export interface ArtifactStoreChoice {
  /** For startMlflow; undefined: files in `<dir>/artifacts`. */
  readonly artifacts?: S3ArtifactStore | undefined;
  /** The tracking store's folder (mlflow.db). */
  readonly dir: string;
  /** Where the artifacts are, in words, for the console. */
  readonly description: string;
  /** Stops what was started for it (the in-memory bucket of MLFLOW_S3=1) and removes its temporary files. */
  stop(): Promise<void>;
}

export const LOCAL_MLFLOW_DIR = path.join(ROOT, 'data', 'mlflow');
/** The bucket of `MLFLOW_S3=1` (moto, in memory). */
export const LOCAL_S3_BUCKET = 'conveyor-mlflow';

/**
 * For `make mlflow` and `make train`/`promote`/`rollback` (scripts/with-mlflow.ts):
 * - MLFLOW_ARTIFACTS_DESTINATION=s3://<bucket>/<prefix>: that bucket (on AWS, or on the S3-compatible
 *   server at MLFLOW_S3_ENDPOINT_URL), with boto3's usual credentials from this environment;
 * - else MLFLOW_S3=1: a local moto server started for the purpose (in memory: runs and models last
 *   as long as the server, so the tracking store is a temporary folder too);
 * - else files in data/mlflow/artifacts, as always.
 * Each S3 destination gets a tracking store of its own (data/mlflow-s3/<bucket>_<prefix>/mlflow.db):
 * a run's artifact URI is relative to the destination, so a store served with another one would
 * list runs whose files are not there.
 */
export async function artifactStoreFromEnv(env: NodeJS.ProcessEnv = process.env): Promise<ArtifactStoreChoice> {
  const destination = env.MLFLOW_ARTIFACTS_DESTINATION?.trim();
  if (destination) {
    if (!/^s3:\/\/[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](?:\/|$)/.test(destination))
      throw new Error(`MLFLOW_ARTIFACTS_DESTINATION must be s3://<bucket>[/<prefix>] (got ${destination})`);
    const slug = destination
      .slice('s3://'.length)
      .replace(/\/+$/, '')
      .replace(/[^A-Za-z0-9.-]+/g, '_');
    const endpointUrl = env.MLFLOW_S3_ENDPOINT_URL || undefined;
    return {
      artifacts: { destination, endpointUrl },
      dir: path.join(ROOT, 'data', 'mlflow-s3', slug),
      description: `${destination} (${endpointUrl ? `S3-compatible server at ${endpointUrl}` : "AWS's S3 endpoint"}, credentials from the environment)`,
      stop: () => Promise.resolve(),
    };
  }
  if (env.MLFLOW_S3 === '1' || env.MLFLOW_S3 === 'true') {
    // Loaded only here: everything else that starts MLflow (every test run) needs no S3 client.
    const { startS3 } = await import('./s3-server.js');
    const s3 = await startS3({ bucket: LOCAL_S3_BUCKET });
    const dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-mlflow-s3-'));
    return {
      artifacts: {
        destination: `s3://${s3.bucket}/artifacts`,
        endpointUrl: s3.endpoint,
        credentials: s3.credentials,
        region: s3.region,
      },
      dir,
      description: `s3://${s3.bucket}/artifacts on a local moto server at ${s3.endpoint} (versioned, in memory: runs and artifacts last until this stops)`,
      stop: async () => {
        await s3.stop();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  }
  return {
    dir: LOCAL_MLFLOW_DIR,
    description: `${path.relative(ROOT, path.join(LOCAL_MLFLOW_DIR, 'artifacts'))} (local files)`,
    stop: () => Promise.resolve(),
  };
}
