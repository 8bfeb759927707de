import type { Server } from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from '@conveyor/shared/logger';
import { addressKey } from './client-identity.js';

/**
 * Connections as a shared resource: a total per gateway, and a share per client address, so one
 * client cannot take every slot. With a single shared cap (`server.maxConnections`), one address
 * holding 1,024 silent sockets and reopening each as it was cut left 0 of 23 legitimate requests
 * served in 75 s: the cap turned file-descriptor pressure into a total outage.
 *
 * - An address may hold `maxPerClient` connections; its next ones are closed at once.
 * - At the total, the gateway makes room rather than refusing the newcomer: it closes the oldest
 *   idle connection (no request in progress: a keep-alive connection between requests, or one that
 *   has not finished its first request head) of the address holding the most connections. Only when
 *   no connection is idle is the newcomer closed. A request in progress is never cut for another.
 * - Silent connections are cut by the server's headers timeout (see gateway.service.ts), which is
 *   what bounds a client that opens connections and sends nothing.
 *
 * The address is the socket's peer (an IPv6 client by its /64: `addressKey`). Behind a reverse proxy every connection comes from the proxy,
 * so the per-address share is the proxy's share: it is then set to the total by default, and
 * per-client connection limits belong to the proxy (docs/isolation.md).
 */
export interface ConnectionLimits {
  readonly maxConnections: number;
  readonly maxPerClient: number;
}

export type ConnectionRefusal = 'client' | 'full' | 'evicted';

interface Tracked {
  readonly socket: Socket;
  readonly client: string;
  /** Requests in progress on this connection (more than one only when pipelined). */
  active: number;
}

export class ConnectionGuard {
  /** Per address, its connections in the order they were opened (a Set keeps insertion order). */
  private readonly byClient = new Map<string, Set<Tracked>>();
  private readonly bySocket = new WeakMap<Socket, Tracked>();
  private total = 0;
  private readonly counts = { refusedClient: 0, refusedFull: 0, evicted: 0 };
  private readonly report: NodeJS.Timeout;

  constructor(
    private readonly limits: ConnectionLimits,
    private readonly log: Logger,
    private readonly onRefusal: (reason: ConnectionRefusal) => void = () => undefined,
  ) {
    // One summary line per interval at most: a hog reconnecting 40 times a second must not flood the log.
    this.report = setInterval(() => this.flushReport(), 10_000);
    this.report.unref();
  }

  /** Open connections now (for tests and metrics). */
  get open(): number {
    return this.total;
  }

  attach(server: Server): void {
    server.on('connection', (socket: Socket) => this.admit(socket));
    server.on('request', (req, res) => {
      const tracked = this.bySocket.get(req.socket);
      if (!tracked) return;
      tracked.active++;
      res.once('close', () => tracked.active--);
    });
  }

  close(): void {
    clearInterval(this.report);
    this.flushReport();
  }

  private admit(socket: Socket): void {
    const client = addressKey(socket.remoteAddress ?? 'unknown');
    const own = this.byClient.get(client);
    if (own && own.size >= this.limits.maxPerClient) {
      this.counts.refusedClient++;
      this.onRefusal('client');
      // A client at its share makes room from its own idle connections first: one that pools
      // keep-alive connections (undici, browsers) opens a new one and is served, and a silent hog
      // only ever replaces its own. Refused only when every connection it holds is busy.
      const idle = this.oldestIdle(own);
      if (!idle) {
        socket.destroy();
        return;
      }
      this.untrack(idle);
      idle.socket.destroy();
    }
    if (this.total >= this.limits.maxConnections) {
      const victim = this.idleVictim();
      if (!victim) {
        this.counts.refusedFull++;
        this.onRefusal('full');
        socket.destroy();
        return;
      }
      this.counts.evicted++;
      this.onRefusal('evicted');
      this.untrack(victim);
      victim.socket.destroy();
    }
    const tracked: Tracked = { socket, client, active: 0 };
    this.bySocket.set(socket, tracked);
    // Read again: making room may have emptied (and dropped) the client's set.
    const set = this.byClient.get(client) ?? new Set<Tracked>();
    set.add(tracked);
    this.byClient.set(client, set);
    this.total++;
    socket.once('close', () => this.untrack(tracked));
  }

  /** The oldest connection of `set` with no request in progress (a Set keeps insertion order). */
  private oldestIdle(set: Set<Tracked>): Tracked | undefined {
    for (const tracked of set) if (tracked.active === 0) return tracked;
    return undefined;
  }

  /** The oldest idle connection of the address holding the most connections that has an idle one. */
  private idleVictim(): Tracked | undefined {
    let best: Tracked | undefined;
    let bestHeld = 0;
    for (const set of this.byClient.values()) {
      if (set.size <= bestHeld) continue;
      for (const tracked of set) {
        if (tracked.active === 0) {
          best = tracked;
          bestHeld = set.size;
          break;
        }
      }
    }
    return best;
  }

  private untrack(tracked: Tracked): void {
    const set = this.byClient.get(tracked.client);
    if (!set?.delete(tracked)) return;
    this.total--;
    if (set.size === 0) this.byClient.delete(tracked.client);
  }

  private flushReport(): void {
    const { refusedClient, refusedFull, evicted } = this.counts;
    if (refusedClient + refusedFull + evicted === 0) return;
    this.log.warn(
      { refusedClient, refusedFull, evicted, open: this.total, ...this.limits },
      'connections refused or closed to make room (per-client share or total reached)',
    );
    this.counts.refusedClient = 0;
    this.counts.refusedFull = 0;
    this.counts.evicted = 0;
  }
}
