import { writeFile } from 'node:fs/promises';
import os from 'node:os';
import type { FleetStore } from '@conveyor/shared/contract/fleet-store';
import type { ModelAnnouncement, RefusedModel, ServedModel, WorkerHeartbeat } from '@conveyor/shared/contract/workers.contract';
import { settlesWithin } from '@conveyor/shared/lifecycle';
import type { Logger } from '@conveyor/shared/logger';

/**
 * Tells the rest of the system that this worker is alive and which models it serves, through the
 * fleet's store (FleetStore): a heartbeat that lives three beats, so a worker that dies stops
 * counting by itself.
 *
 * Only warm models are listed (each has answered a synthetic input and takes jobs from its queue),
 * so a gateway never routes a caller to a model still loading; the first beat waits for the first
 * warm model (readers of the previous release need `model`). Each beat also rewrites what the
 * gateways read about every model served: its announcement (manifest summary) and, per version, its
 * labels, so both survive a Redis that restarted empty.
 */
export interface ServingState {
  /** The models serving now, in the configured order; never empty once the heartbeat started. */
  readonly models: readonly ServedModel[];
  readonly announcements: readonly ModelAnnouncement[];
  /** Configured models refused (their folder failed its checks): listed so gateways can say why. */
  readonly refused: readonly RefusedModel[];
  readonly processed: number;
  readonly failed: number;
}

export class Heartbeat {
  private timer: NodeJS.Timeout | undefined;
  private starting: Promise<void> | undefined;
  private stopped = false;
  private readonly startedAt = new Date().toISOString();

  constructor(
    private readonly fleet: FleetStore,
    private readonly id: string,
    private readonly intervalMs: number,
    private readonly describe: () => ServingState,
    private readonly log: Logger,
    private readonly healthFile?: string,
  ) {}

  /**
   * Starts beating (once, however many models become warm together), or beats at once if it already
   * does: a model that just became warm is announced now, not at the next beat.
   */
  async announce(): Promise<void> {
    if (this.stopped) return;
    if (!this.starting) {
      this.starting = this.start();
      return this.starting;
    }
    await this.starting;
    await this.beat();
  }

  private async start(): Promise<void> {
    await this.beat();
    // Stopped while the first beat was on its way (a shutdown during start-up): no timer to leave behind.
    if (this.stopped) return;
    this.timer = setInterval(() => {
      this.beat().catch((error: unknown) => this.log.warn({ err: error }, 'heartbeat failed'));
    }, this.intervalMs);
    this.timer.unref();
  }

  /** Deregisters at once, so /ready stops counting this worker; with Redis away, the entry expires with its TTL. */
  async stop(timeoutMs = 2000): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    this.timer = undefined;
    if (!this.fleet.ready) {
      this.log.warn('Redis is unreachable: the heartbeat entry is left to expire');
      return;
    }
    await settlesWithin(this.fleet.leave(this.id), timeoutMs);
  }

  private async beat(): Promise<void> {
    const now = Date.now();
    const ttl = this.intervalMs * 3;
    const { models, announcements, refused, processed, failed } = this.describe();
    const [first] = models;
    if (!first) throw new Error('no model is serving yet: nothing to announce');
    const body: WorkerHeartbeat = {
      kind: 'worker-heartbeat',
      version: 1,
      id: this.id,
      hostname: os.hostname(),
      pid: process.pid,
      startedAt: this.startedAt,
      at: new Date(now).toISOString(),
      model: first.model,
      concurrency: models.reduce((sum, m) => sum + m.concurrency, 0),
      models: [...models],
      ...(refused.length > 0 ? { refused: [...refused] } : {}),
      processed,
      failed,
    };
    await this.fleet.beat(body, announcements, ttl, now);
    if (this.healthFile) await writeFile(this.healthFile, body.at);
  }
}
