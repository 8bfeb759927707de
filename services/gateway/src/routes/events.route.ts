import { PassThrough } from 'node:stream';
import type Router from '@koa/router';
import { z } from 'zod';
import { ProblemError } from '@conveyor/shared/problem';
import type { Access } from '../access/access.middleware.js';
import type { CallbackDispatcher } from '../callbacks/callback-dispatcher.js';
import { clientOf } from '../http/client-identity.js';
import type { JobOwnership } from '../access/job-ownership.js';
import type { GatewayContext, GatewayState } from '../http/context.js';
import type { JobLookup, JobView } from '../jobs/job-lookup.js';
import { lostJob } from './jobs.route.js';

/**
 * GET /v1/jobs/{id}/events: Server-Sent Events for a browser that wants to wait without polling.
 * A `state` event whenever the job's state changes (queued, active), then one `result` event with
 * the finished job (as `GET /v1/jobs/{id}` answers it) and the end of the stream.
 *
 * Every stream is bounded: at most `maxConnections` open on this gateway (503 beyond) and
 * `maxPerClient` per API key, or per client IP without keys (429 beyond); each is closed after
 * `maxSeconds` (a `timeout` event first; the client may reconnect) and when the client goes.
 * The gateway reads the job every `pollMs` per stream: the bounds bound that too.
 *
 * At shutdown every open stream gets a last `shutdown` event carrying `retry: 1000` and is ended
 * by the gateway (`OpenStreams.closeAll`): an EventSource reconnects by itself, to another
 * instance or to this one restarted. Left open, streams held a stopping gateway until its budget
 * ran out (1.6 → 11.4 s, past compose's 10 s grace).
 */
export interface EventStreamLimits {
  readonly maxConnections: number;
  readonly maxPerClient: number;
  readonly maxSeconds: number;
  readonly pollMs?: number;
  readonly keepAliveMs?: number;
}

const JobId = z.uuid();

/** The streams open on one gateway, so that shutdown can end them all. */
export class OpenStreams {
  private readonly streams = new Set<(event: string, data: unknown, retryMs?: number) => void>();
  private stopping = false;

  get size(): number {
    return this.streams.size;
  }

  get closing(): boolean {
    return this.stopping;
  }

  /** `finish` sends a last event and ends the stream; it is removed once the stream ends. */
  add(finish: (event: string, data: unknown, retryMs?: number) => void): () => void {
    this.streams.add(finish);
    return () => {
      this.streams.delete(finish);
    };
  }

  /** Refuses new streams and ends every open one, telling its client to reconnect in `retryMs`. */
  closeAll(retryMs = 1000): number {
    this.stopping = true;
    const open = [...this.streams];
    for (const finish of open) {
      finish('shutdown', { detail: 'The gateway is shutting down; reconnect to go on' }, retryMs);
    }
    return open.length;
  }
}

interface EventDeps {
  lookup: JobLookup;
  access: Access;
  callbacks: CallbackDispatcher;
  limits: EventStreamLimits;
  streams?: OpenStreams;
  /** Another key's job is answered as an unknown one. */
  ownership: JobOwnership;
}

export function registerEventRoutes(router: Router<GatewayState>, deps: EventDeps): void {
  const streams = deps.streams ?? new OpenStreams();
  const slots = new StreamSlots(deps.limits);

  router.get('/v1/jobs/:id/events', deps.access.require('predict'), async (ctx) => {
    const id = ctx.params.id ?? '';
    const first =
      JobId.safeParse(id).success && (await deps.ownership.mayRead(ctx.state.apiKey, id))
        ? await deps.lookup.find(id)
        : undefined;
    if (!first) throw new ProblemError('not-found', `No job ${id}: unknown, or its result has expired`);
    ctx.state.jobId = id;
    if (streams.closing) {
      throw new ProblemError('not-ready', 'The gateway is shutting down; reconnect shortly', { retryAfterSeconds: 1 });
    }
    const giveBack = slots.take(clientOf(ctx));
    const stream = openStream(ctx, streams, deps.limits, giveBack);
    // Runs after this handler returns (Koa is already streaming the body).
    void follow(ctx, deps, id, first, stream);
  });
}

/** The event streams open on this gateway, in total and per client, within their limits. */
class StreamSlots {
  private open = 0;
  private readonly perClient = new Map<string, number>();

  constructor(private readonly limits: EventStreamLimits) {}

  /** A slot for `client`, or the refusal; returns what gives it back. */
  take(client: string): () => void {
    const { limits } = this;
    if (this.open >= limits.maxConnections) {
      throw new ProblemError('overloaded', 'Too many event streams are open on this gateway; poll GET /v1/jobs/{id} instead', {
        retryAfterSeconds: 5,
      });
    }
    if ((this.perClient.get(client) ?? 0) >= limits.maxPerClient) {
      throw new ProblemError('rate-limited', `At most ${limits.maxPerClient} event streams may be open at once per client`, {
        retryAfterSeconds: 5,
      });
    }
    this.open++;
    this.perClient.set(client, (this.perClient.get(client) ?? 0) + 1);
    return () => {
      this.open--;
      const left = (this.perClient.get(client) ?? 1) - 1;
      if (left > 0) this.perClient.set(client, left);
      else this.perClient.delete(client);
    };
  }
}

/** An open stream as the poll loop uses it. */
interface EventStream {
  send(event: string, data: unknown): void;
  /** Whether the stream has ended (client gone, timed out, shut down). */
  ended(): boolean;
  end(): void;
  /** Waits `ms` unless the stream ends first (its timer is cleared with the stream). */
  pause(ms: number): Promise<void>;
}

/** Starts the SSE answer: headers, keep-alives, the time limit, and the end on close or shutdown. */
function openStream(ctx: GatewayContext, streams: OpenStreams, limits: EventStreamLimits, giveBack: () => void): EventStream {
  const keepAliveMs = limits.keepAliveMs ?? 15_000;
  const stream = new PassThrough();
  ctx.status = 200;
  ctx.type = 'text/event-stream';
  ctx.set('Cache-Control', 'no-cache, no-transform');
  ctx.set('X-Accel-Buffering', 'no'); // proxies (nginx) would hold events back otherwise
  ctx.body = stream;

  let ended = false;
  const timers: NodeJS.Timeout[] = [];
  let forget = (): void => undefined;
  const end = () => {
    if (ended) return;
    ended = true;
    forget();
    timers.forEach((t) => clearTimeout(t));
    giveBack();
    stream.end();
  };
  const send = (event: string, data: unknown) => {
    if (!ended) stream.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  };
  forget = streams.add((event, data, retryMs) => {
    if (!ended)
      stream.write(`${retryMs === undefined ? '' : `retry: ${retryMs}\n`}event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    end();
  });
  ctx.req.once('close', end);
  stream.once('close', end);
  timers.push(
    setTimeout(() => {
      send('timeout', { detail: `streams close after ${limits.maxSeconds} s; reconnect to go on` });
      end();
    }, limits.maxSeconds * 1000),
  );
  const keepAlive = setInterval(() => !ended && stream.write(': keep-alive\n\n'), keepAliveMs);
  timers.push(keepAlive);
  stream.once('close', () => clearInterval(keepAlive));
  stream.write('retry: 2000\n\n');
  return {
    send,
    end,
    ended: () => ended,
    pause: (ms) => new Promise((resolve) => timers.push(setTimeout(resolve, ms))),
  };
}

/** Sends the job's state each time it changes, then its result (or that it is gone), and ends. */
async function follow(ctx: GatewayContext, deps: EventDeps, id: string, first: JobView, stream: EventStream): Promise<void> {
  const pollMs = deps.limits.pollMs ?? 250;
  let last = '';
  const emit = async (view: JobView): Promise<boolean> => {
    const callback = await deps.callbacks.state(id);
    const extra = callback ? { callback } : {};
    if (view.kind === 'pending') {
      const body = { id, status: view.status, model: view.model, ...extra };
      const key = JSON.stringify(body);
      if (key !== last) stream.send('state', body);
      last = key;
      return false;
    }
    if (view.kind === 'finished') stream.send('result', { ...view.result, ...extra });
    else stream.send('result', { ...lostJob(id, view.reason), ...extra });
    return true;
  };
  try {
    let view: JobView | undefined = first;
    while (!stream.ended() && view && !(await emit(view))) {
      await stream.pause(pollMs);
      if (stream.ended()) return;
      view = await deps.lookup.find(id);
    }
    if (!view) stream.send('gone', { detail: `No job ${id} any more: its result has expired` });
  } catch (error) {
    ctx.state.log.warn({ err: error }, 'event stream failed');
    stream.send('error', { detail: 'The job could not be read; retry' });
  } finally {
    stream.end();
  }
}
