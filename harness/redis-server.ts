import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { freePort } from './free-port.js';
import { LISTEN, socketInodes, tcpSockets } from './proc-sockets.js';

/**
 * A private redis-server for `make run`, the tests and the benchmarks: on a free port (or the one
 * asked for), with its data in the given folder, stopped with the process that started it. It is
 * only ever "started" once the server answering on the port reports the pid of the child spawned
 * here: a Redis (or anything else) already on the port is never mistaken for it.
 */
export interface LocalRedis {
  readonly url: string;
  readonly port: number;
  readonly pid: number;
  stop(): Promise<void>;
}

/** The port asked for is taken by a process this module did not start; `occupant` names it. */
export class PortInUseError extends Error {
  constructor(
    readonly port: number,
    readonly occupant: Occupant,
  ) {
    super(`port ${port} is already in use by ${occupant.description}`);
    this.name = 'PortInUseError';
  }
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
  /**
   * A memory bound that refuses writes instead of evicting queued work (`noeviction`): the gateway
   * answers 503 when it is reached. `make run` sets one; tests leave it off.
   */
  maxMemory?: string;
}): Promise<LocalRedis> {
  if (!redisServerAvailable()) throw new Error(INSTALL_HINT);
  mkdirSync(options.dir, { recursive: true });
  if (options.port !== undefined) {
    const occupant = await portOccupant(options.port);
    if (occupant) throw new PortInUseError(options.port, occupant);
  }
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = options.port ?? (await freePort());
    const args = ['--port', String(port), '--bind', '127.0.0.1', '--dir', options.dir, '--save', '', '--daemonize', 'no'];
    args.push('--appendonly', options.persist ? 'yes' : 'no');
    // As docker-compose.yml: the AOF is rewritten once it reaches 1 GB (or twice its last rewrite),
    // not at Redis's default 64 MB. Images are ~99 % of the AOF's bytes and live under a second, so at
    // 100 req/s with the default retention the file grew ~10 MB/s and Redis forked a rewrite of its
    // ~150 MB dataset every ~11 s (docs/redis-memory.md).
    if (options.persist) args.push('--auto-aof-rewrite-min-size', '1gb');
    if (options.maxMemory) args.push('--maxmemory', options.maxMemory, '--maxmemory-policy', 'noeviction');
    const child = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'], detached: options.detached ?? false });
    const output: string[] = [];
    child.stdout.on('data', (d: Buffer) => output.push(d.toString()));
    child.stderr.on('data', (d: Buffer) => output.push(d.toString()));
    if (child.pid !== undefined && (await listening(port, child))) {
      const pid = child.pid;
      return { url: `redis://127.0.0.1:${port}`, port, pid, stop: () => stop(child) };
    }
    child.kill('SIGKILL');
    // Taken between the check above and the bind (or a random port just taken by someone else).
    if (options.port !== undefined) {
      const occupant = await portOccupant(port);
      if (occupant) throw new PortInUseError(port, occupant);
      throw new Error(`redis-server did not start on port ${port}:\n${output.join('')}`);
    }
  }
  throw new Error('redis-server did not start after 5 attempts');
}

/** Ready once the server on the port says it is our child (INFO's process_id), not merely once something accepts. */
async function listening(port: number, child: ChildProcess): Promise<boolean> {
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null || child.signalCode !== null) return false;
    const probe = await probeRedis(port, 500);
    if (probe.kind === 'redis' && probe.info.process_id === String(child.pid)) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return false;
}

export interface Occupant {
  /** In words for a message: "redis-server 7.0.15 (pid 812, config /etc/redis/redis.conf)", "node (pid 4242)". */
  readonly description: string;
  /** It answers like a Redis (so REDIS_URL could point at it). */
  readonly redis: boolean;
}

/** What accepts connections on 127.0.0.1:port, or undefined when the port is free. */
export async function portOccupant(port: number): Promise<Occupant | undefined> {
  const probe = await probeRedis(port, 1000);
  switch (probe.kind) {
    case 'free':
      return undefined;
    case 'redis': {
      const { redis_version: version, process_id: pid, config_file: config } = probe.info;
      const details = [pid && `pid ${pid}`, config && `config ${config}`].filter((d) => d);
      const description = ['redis-server', version, details.length ? `(${details.join(', ')})` : ''].filter((w) => w).join(' ');
      return { description, redis: true };
    }
    case 'redis-refused': {
      const listener = listenerProcess(port);
      const owner = listener ? `, ${listener.command} pid ${listener.pid}` : '';
      return { description: `a Redis server that refused INFO (${probe.error}${owner})`, redis: true };
    }
    case 'other': {
      const listener = listenerProcess(port);
      const description = listener
        ? `${listener.command} (pid ${listener.pid}), not a Redis`
        : 'a process this user cannot identify, not a Redis';
      return { description, redis: false };
    }
    default: {
      const never: never = probe;
      return never;
    }
  }
}

type RedisProbe =
  | { kind: 'free' }
  | { kind: 'redis'; info: Partial<Record<string, string>> }
  /** A Redis that answered with an error: a password (NOAUTH), protected mode, a renamed command. */
  | { kind: 'redis-refused'; error: string }
  /** Something that accepted the connection but did not answer INFO like a Redis within the timeout. */
  | { kind: 'other' };

/** Connects to 127.0.0.1:port and asks `INFO server`, without a client library (nothing else is needed). */
async function probeRedis(port: number, timeoutMs: number): Promise<RedisProbe> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    let reply = '';
    let connected = false;
    const done = (probe: RedisProbe) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(probe);
    };
    const timer = setTimeout(() => done(connected ? { kind: 'other' } : { kind: 'free' }), timeoutMs);
    socket.once('connect', () => {
      connected = true;
      socket.write('INFO server\r\n');
    });
    socket.on('data', (chunk: Buffer) => {
      reply += chunk.toString('latin1');
      const header = /^\$(\d+)\r\n/.exec(reply);
      if (header) {
        const body = reply.slice(header[0].length);
        if (body.length < Number(header[1])) return;
        const info: Partial<Record<string, string>> = {};
        for (const line of body.split('\r\n')) {
          const colon = line.indexOf(':');
          if (colon > 0 && !line.startsWith('#')) info[line.slice(0, colon)] = line.slice(colon + 1);
        }
        done({ kind: 'redis', info });
      } else if (reply.startsWith('-') && reply.includes('\r\n')) {
        done({ kind: 'redis-refused', error: reply.slice(1, reply.indexOf('\r\n')) });
      } else if (reply.length > 0 && !reply.startsWith('$') && !reply.startsWith('-')) {
        done({ kind: 'other' });
      }
    });
    socket.once('error', () => done(connected ? { kind: 'other' } : { kind: 'free' }));
    socket.once('close', () => done(connected ? { kind: 'other' } : { kind: 'free' }));
  });
}

/**
 * The process holding the listening socket on the port, from /proc (Linux only, and only for
 * processes this user may inspect: as root, all of them). Best effort, for error messages.
 */
function listenerProcess(port: number): { pid: number; command: string } | undefined {
  if (process.platform !== 'linux') return undefined;
  const inodes = new Set(
    tcpSockets()
      .filter((s) => s.state === LISTEN && s.localPort === port)
      .map((s) => s.inode),
  );
  if (inodes.size === 0) return undefined;
  for (const pid of readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
    if (!socketInodes(pid).some((inode) => inodes.has(inode))) continue;
    let command = 'a process';
    try {
      command = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    } catch {
      // Gone since: the pid alone still says something.
    }
    return { pid: Number(pid), command };
  }
  return undefined;
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}
