import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { readSecretFile } from '@conveyor/shared/config';
import type { MlflowCredentials } from '@conveyor/shared/mlflow/client';
import { freePort } from './free-port.js';
import { ROOT } from './service-process.js';

/**
 * A real MLflow tracking server (Python, pinned, in the project's own virtual environment) with a
 * SQLite backend store and artifacts served through the server's proxy — for `make mlflow`,
 * `make train` and the tests. With `auth`, it runs MLflow's basic-auth app
 * (scripts/mlflow/basic-auth.ini) with an admin and a READ-only reader, as the compose image does.
 */
export interface LocalMlflow {
  readonly url: string;
  readonly port: number;
  readonly auth?: MlflowAuth | undefined;
  stop(): Promise<void>;
}

export interface MlflowAuth {
  /** An MLflow admin: the trainer's account, the only one that registers versions and moves aliases. */
  readonly admin: MlflowCredentials;
  /** Reads everything (`default_permission = READ`), changes nothing: the workers' and the monitor's. */
  readonly reader?: MlflowCredentials | undefined;
}

export const AUTH_CONFIG = path.join(ROOT, 'scripts/mlflow/basic-auth.ini');
const PROVISION = path.join(ROOT, 'scripts/mlflow/provision-auth.py');

export function ensureMlflowInstalled(): string {
  const result = spawnSync('bash', [path.join(ROOT, 'scripts/mlflow/ensure-venv.sh')], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  if (result.status !== 0) throw new Error('could not install MLflow (scripts/mlflow/ensure-venv.sh failed)');
  return result.stdout.trim();
}

export async function startMlflow(options: {
  dir: string;
  port?: number;
  host?: string;
  quiet?: boolean;
  auth?: MlflowAuth | undefined;
}): Promise<LocalMlflow> {
  const mlflow = ensureMlflowInstalled();
  mkdirSync(options.dir, { recursive: true });
  const port = options.port ?? (await freePort());
  const host = options.host ?? '127.0.0.1';
  const { auth } = options;
  // Nothing of the caller's MLflow settings may leak into the server (a tracking URI would make it
  // a client of another server; a bootstrap password would sit in its environment for nothing).
  const env: NodeJS.ProcessEnv = {
    ...Object.fromEntries(
      Object.entries(process.env).filter(([key]) => !/^MLFLOW_(AUTH_|TRACKING_USERNAME|TRACKING_PASSWORD)/.test(key)),
    ),
    MLFLOW_TRACKING_URI: '',
  };
  const appArgs: string[] = [];
  if (auth) {
    Object.assign(env, {
      MLFLOW_AUTH_CONFIG_PATH: AUTH_CONFIG,
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
      path.resolve(options.dir, 'artifacts'),
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
    if (ok) return { url, port, auth, stop };
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
