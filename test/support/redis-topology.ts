import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { freePort } from '../../harness/free-port.js';
import { until } from './wait.js';

/**
 * Redis beyond one node, started by the test itself on free local ports with the machine's own
 * redis-server: a 3-master Redis Cluster, and a master with a replica watched by three Sentinels
 * (quorum 2). Every server is this process's child and is killed with it.
 */
export interface RedisNode {
  readonly port: number;
  readonly child: ChildProcess;
  /** Ends the server (SIGKILL: no chance to hand anything over, as when a node dies). */
  kill(): Promise<void>;
}

const run = promisify(execFile);

async function startNode(dir: string, name: string, args: string[]): Promise<RedisNode> {
  const port = await freePort();
  const child = spawn('redis-server', [...args, '--port', String(port), '--bind', '127.0.0.1', '--dir', dir], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output: string[] = [];
  child.stdout.on('data', (d: Buffer) => output.push(d.toString()));
  child.stderr.on('data', (d: Buffer) => output.push(d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const node: RedisNode = {
    port,
    child,
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
  try {
    await until(
      `${name} on port ${port} to answer PING`,
      async () => {
        if (child.exitCode !== null) throw new Error(`${name} exited:\n${output.join('')}`);
        return (await ping(port)) === 'PONG';
      },
      15_000,
    );
  } catch (error) {
    await node.kill();
    throw error;
  }
  return node;
}

async function ping(port: number): Promise<string | undefined> {
  const client = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  client.on('error', () => undefined);
  try {
    await client.connect();
    return await client.ping();
  } catch {
    return undefined;
  } finally {
    client.disconnect();
  }
}

/** One command to a node, on a short-lived connection. */
export async function command(port: number, ...args: (string | number)[]): Promise<unknown> {
  const client = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  client.on('error', () => undefined);
  try {
    await client.connect();
    return await client.call(String(args[0]), ...args.slice(1).map(String));
  } finally {
    client.disconnect();
  }
}

export interface LocalCluster {
  /** REDIS_URL for the services: every master as a seed node. */
  readonly url: string;
  readonly masters: readonly RedisNode[];
  stop(): Promise<void>;
}

/** `masters` cluster-enabled servers joined by `redis-cli --cluster create` (no replicas), slots all covered. */
export async function startCluster(dir: string, masters = 3): Promise<LocalCluster> {
  const nodes: RedisNode[] = [];
  const stop = async () => {
    await Promise.all(nodes.map((n) => n.kill()));
  };
  try {
    for (let i = 0; i < masters; i++) {
      nodes.push(
        await startNode(dir, `cluster node ${i}`, [
          '--cluster-enabled',
          'yes',
          '--cluster-config-file',
          path.join(dir, `nodes-${i}.conf`),
          '--cluster-node-timeout',
          '5000',
          '--save',
          '',
          '--appendonly',
          'no',
        ]),
      );
    }
    const addresses = nodes.map((n) => `127.0.0.1:${n.port}`);
    await run('redis-cli', ['--cluster', 'create', ...addresses, '--cluster-replicas', '0', '--cluster-yes'], {
      timeout: 30_000,
    });
    // Every node must agree that all 16384 slots are served before a client's first CLUSTER SLOTS.
    await until(
      'the cluster to report state ok on every node',
      async () => {
        const infos = await Promise.all(nodes.map((n) => command(n.port, 'CLUSTER', 'INFO')));
        return infos.every((info) => String(info).includes('cluster_state:ok'));
      },
      30_000,
    );
    return { url: `redis+cluster://${addresses.join(',')}`, masters: nodes, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

export interface LocalSentinels {
  /** REDIS_URL for the services: the three Sentinels and the master's name. */
  readonly url: string;
  readonly masterName: string;
  master: RedisNode;
  readonly replica: RedisNode;
  readonly sentinels: readonly RedisNode[];
  /** The address the Sentinels give for the master now. */
  currentMaster(): Promise<number>;
  stop(): Promise<void>;
}

/**
 * A master, one replica of it, and three Sentinels with quorum 2 that declare the master down after
 * `downAfterMs` without an answer and then promote the replica.
 */
export async function startSentinels(dir: string, downAfterMs = 1000): Promise<LocalSentinels> {
  const masterName = 'conveyor-test';
  const started: RedisNode[] = [];
  const stop = async () => {
    await Promise.all(started.map((n) => n.kill()));
  };
  try {
    const common = ['--save', '', '--appendonly', 'no'];
    const master = await startNode(dir, 'master', common);
    started.push(master);
    const replica = await startNode(dir, 'replica', [...common, '--replicaof', '127.0.0.1', String(master.port)]);
    started.push(replica);
    await until(
      'the replica to be in sync with the master',
      async () => String(await command(replica.port, 'INFO', 'replication')).includes('master_link_status:up'),
      15_000,
    );
    const sentinels: RedisNode[] = [];
    for (let i = 0; i < 3; i++) {
      // Sentinel rewrites its configuration file (what it learnt about replicas and peers): one each.
      const conf = path.join(dir, `sentinel-${i}.conf`);
      writeFileSync(
        conf,
        [
          `sentinel monitor ${masterName} 127.0.0.1 ${master.port} 2`,
          `sentinel down-after-milliseconds ${masterName} ${downAfterMs}`,
          `sentinel failover-timeout ${masterName} 10000`,
          `sentinel parallel-syncs ${masterName} 1`,
          '',
        ].join('\n'),
      );
      const sentinel = await startNode(dir, `sentinel ${i}`, [conf, '--sentinel']);
      sentinels.push(sentinel);
      started.push(sentinel);
    }
    // A failover needs the Sentinels to know each other (for the quorum and the leader vote) and the replica.
    await until(
      'every Sentinel to know the replica and the two other Sentinels',
      async () => {
        const views = await Promise.all(
          sentinels.map(async (s) => ({
            peers: ((await command(s.port, 'SENTINEL', 'SENTINELS', masterName)) as unknown[]).length,
            replicas: ((await command(s.port, 'SENTINEL', 'REPLICAS', masterName)) as unknown[]).length,
          })),
        );
        return views.every((v) => v.peers === 2 && v.replicas === 1);
      },
      30_000,
    );
    const addresses = sentinels.map((s) => `127.0.0.1:${s.port}`).join(',');
    return {
      url: `redis+sentinel://${addresses}/${masterName}`,
      masterName,
      master,
      replica,
      sentinels,
      currentMaster: async () => {
        const [, port] = (await command(sentinels[0]!.port, 'SENTINEL', 'GET-MASTER-ADDR-BY-NAME', masterName)) as [
          string,
          string,
        ];
        return Number(port);
      },
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}
