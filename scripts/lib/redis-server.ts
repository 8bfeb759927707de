import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import net from 'node:net';
import { freePort } from './free-port.js';

/**
 * A private redis-server for `make run`, the tests and the benchmarks: on a free port, with its
 * data in the given folder, stopped with the process that started it.
 */
export interface LocalRedis {
  readonly url: string;
  readonly port: number;
  stop(): Promise<void>;
}

export function redisServerAvailable(): boolean {
  return spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).status === 0;
}

export const INSTALL_HINT =
  'redis-server is not installed. Install it (Debian/Ubuntu: `sudo apt-get install -y redis-server`, macOS: `brew install redis`) or set REDIS_URL to an existing Redis.';

export async function startRedis(options: {
  dir: string;
  persist?: boolean;
  port?: number;
  /** In its own process group, out of reach of the terminal's Ctrl-C (see spawnService). */
  detached?: boolean;
}): Promise<LocalRedis> {
  if (!redisServerAvailable()) throw new Error(INSTALL_HINT);
  mkdirSync(options.dir, { recursive: true });
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = options.port ?? (await freePort());
    const args = ['--port', String(port), '--bind', '127.0.0.1', '--dir', options.dir, '--save', '', '--daemonize', 'no'];
    args.push('--appendonly', options.persist ? 'yes' : 'no');
    const child = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'], detached: options.detached ?? false });
    const output: string[] = [];
    child.stdout.on('data', (d: Buffer) => output.push(d.toString()));
    child.stderr.on('data', (d: Buffer) => output.push(d.toString()));
    if (await listening(port, child)) {
      return { url: `redis://127.0.0.1:${port}`, port, stop: () => stop(child) };
    }
    child.kill('SIGKILL');
    if (options.port) throw new Error(`redis-server did not start on port ${port}:\n${output.join('')}`);
  }
  throw new Error('redis-server did not start after 5 attempts');
}

async function listening(port: number, child: ChildProcess): Promise<boolean> {
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null) return false;
    const ok = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.end();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (ok) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return false;
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}
