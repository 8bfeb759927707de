import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { S3Client } from '@aws-sdk/client-s3';
import { ROOT } from './service-process.js';
import { venvBin } from './venv.js';
import { childStopper } from './child-stop.js';

/**
 * A real S3-compatible server for the tests and `MLFLOW_S3=1 make mlflow`: moto's S3 (pinned in
 * requirements/s3.lock.txt, installed into .venv/s3 once) on a port the OS picks, with one bucket
 * whose versioning is on before this resolves (scripts/s3/serve.py, which compose's `s3` service
 * runs too). In memory: stopping it loses every object.
 */
export interface LocalS3 {
  /** What MLFLOW_S3_ENDPOINT_URL (and any S3 client's endpoint) must be. */
  readonly endpoint: string;
  readonly port: number;
  readonly bucket: string;
  readonly region: string;
  /** Random, made for this server: moto accepts any, and none are kept anywhere. */
  readonly credentials: S3Credentials;
  readonly pid: number;
  /** An @aws-sdk/client-s3 client for this server (path-style addressing: no DNS per bucket). */
  client(): S3Client;
  stop(): Promise<void>;
}

export interface S3Credentials {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
}

const SERVE = path.join(ROOT, 'scripts/s3/serve.py');

export function ensureS3Installed(): string {
  return venvBin('s3', 'python');
}

/** Random credentials shaped like AWS's (an access key id of 20 capitals and digits, a 40-character secret). */
export function randomCredentials(): S3Credentials {
  const id = randomBytes(16)
    .toString('base64')
    .replace(/[^A-Za-z0-9]/g, '')
    .toUpperCase();
  return { accessKeyId: `TEST${id}`.slice(0, 20).padEnd(20, 'X'), secretAccessKey: randomBytes(30).toString('base64url') };
}

export async function startS3(options: { bucket: string; host?: string; port?: number }): Promise<LocalS3> {
  const python = ensureS3Installed();
  const host = options.host ?? '127.0.0.1';
  const child = spawn(python, [SERVE, '--host', host, '--port', String(options.port ?? 0), '--bucket', options.bucket], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const errors: string[] = [];
  child.stderr.on('data', (d: Buffer) => errors.push(d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = childStopper(child);
  const ready = await new Promise<{ endpoint: string; port: number } | undefined>((resolve) => {
    const timer = setTimeout(() => resolve(undefined), 60_000);
    const lines = createInterface({ input: child.stdout });
    lines.on('line', (line) => {
      try {
        const record = JSON.parse(line) as { msg?: string; endpoint?: string; port?: number };
        if (record.msg === 's3 ready' && record.endpoint && record.port) {
          clearTimeout(timer);
          resolve({ endpoint: record.endpoint, port: record.port });
        }
      } catch {
        // Not the ready line.
      }
    });
    void exited.then(() => {
      clearTimeout(timer);
      resolve(undefined);
    });
  });
  if (!ready || child.pid === undefined) {
    await stop();
    throw new Error(`the S3 test server did not start (exit ${String(child.exitCode)}):\n${errors.join('').slice(-3000)}`);
  }
  const credentials = randomCredentials();
  const region = 'us-east-1';
  return {
    ...ready,
    bucket: options.bucket,
    region,
    credentials,
    pid: child.pid,
    client: () => {
      // The SDK warns once per process that its releases from 2027 on need Node 22; this pinned one
      // runs on the project's Node >= 20.19, and the warning would only clutter test output.
      process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
      return new S3Client({ endpoint: ready.endpoint, region, credentials, forcePathStyle: true });
    },
    stop,
  };
}
