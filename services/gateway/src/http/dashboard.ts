import { createHash, timingSafeEqual } from 'node:crypto';
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { KoaAdapter } from '@bull-board/koa';
import type { Queue } from 'bullmq';
import type { Middleware } from 'koa';
import { ProblemError } from '@conveyor/shared/problem';
import type { GatewayContext, GatewayState } from './context.js';
import { addressKey } from './client-identity.js';
import { LoginLimiter } from './login-limiter.js';
import { sendProblem } from './problem.middleware.js';

/**
 * The Redis queue dashboard (bull-board) on the gateway at /admin/queues, behind HTTP Basic auth.
 * It is only mounted when credentials are configured: never open by default on a public port.
 *
 * A browser replays cached Basic credentials on any request to the gateway, including those another
 * site makes it send, so credentials alone do not prove intent: writes must also come from the
 * dashboard's own pages (Origin, else Referer) and carry JSON (a form or text body is what a
 * cross-site form can send without a preflight). Framing is forbidden, so buttons such as
 * "obliterate" cannot be clickjacked, and wrong passwords lock their client out for a while.
 */
export const DASHBOARD_PATH = '/admin/queues';

// bull-board's page: its own scripts and stylesheet, inline style attributes and a <style> block,
// IBM Plex from Google Fonts, a JSON data block (not executed), fetches to its own API, a web worker
// for syntax highlighting. No inline script runs, so script-src needs nothing beyond 'self'.
const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self' 'unsafe-inline' https://fonts.googleapis.com",
  "font-src 'self' https://fonts.gstatic.com",
  "img-src 'self' data:",
  "connect-src 'self'",
  "worker-src 'self'",
  "object-src 'none'",
  "base-uri 'self'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

const SECURITY_HEADERS = {
  'Content-Security-Policy': CONTENT_SECURITY_POLICY,
  'X-Frame-Options': 'DENY',
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'same-origin',
} as const;

const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

export interface Dashboard {
  readonly middleware: Middleware<GatewayState>;
  /** Shows one more queue (a model's, when the gateway first routes to it). */
  add(queue: Queue): void;
}

export function dashboard(
  queues: readonly Queue[],
  credentials: { user: string; password: string },
  limiter: LoginLimiter = new LoginLimiter(),
): Dashboard {
  const serverAdapter = new KoaAdapter();
  serverAdapter.setBasePath(DASHBOARD_PATH);
  const bullBoard = createBullBoard({
    queues: queues.map((q) => new BullMQAdapter(q)),
    serverAdapter,
    options: { uiConfig: { boardTitle: 'Conveyor queues' } },
  });
  const board = serverAdapter.registerPlugin() as unknown as Middleware<GatewayState>;
  // Digests have one length whatever was offered: the comparison reveals neither the length nor a prefix.
  const expected = sha256(Buffer.from(`${credentials.user}:${credentials.password}`));
  const middleware: Middleware<GatewayState> = async (ctx, next) => {
    if (ctx.path !== DASHBOARD_PATH && !ctx.path.startsWith(`${DASHBOARD_PATH}/`)) {
      await next();
      return;
    }
    ctx.set(SECURITY_HEADERS);
    const header = ctx.get('authorization');
    const offered = /^Basic +([A-Za-z0-9+/]+={0,2}) *$/i.exec(header)?.[1];
    const decoded = offered === undefined ? undefined : Buffer.from(offered, 'base64');
    const client = loginClient(ctx, decoded);
    const lockedMs = limiter.lockedFor(client);
    if (lockedMs > 0) {
      sendProblem(
        ctx,
        new ProblemError('rate-limited', 'Too many wrong credentials for the queue dashboard from this client', {
          retryAfterSeconds: Math.ceil(lockedMs / 1000),
        }),
      );
      return;
    }
    if (decoded === undefined || !timingSafeEqual(sha256(decoded), expected)) {
      // A request without credentials is the browser asking for the prompt, not a guess.
      if (header !== '') limiter.fail(client);
      ctx.set('WWW-Authenticate', 'Basic realm="Conveyor dashboard", charset="UTF-8"');
      sendProblem(ctx, new ProblemError('unauthorized', 'The queue dashboard needs its credentials'));
      return;
    }
    limiter.succeed(client);
    const refusal = crossSiteRefusal(ctx);
    if (refusal !== undefined) {
      sendProblem(ctx, new ProblemError('forbidden', refusal));
      return;
    }
    await board(ctx, next);
  };
  return { middleware, add: (queue) => bullBoard.addQueue(new BullMQAdapter(queue)) };
}

function sha256(bytes: Buffer): Buffer {
  return createHash('sha256').update(bytes).digest();
}

/**
 * The client a lockout applies to: the address (`ctx.ip`, the one rule for every per-address limit:
 * behind TRUST_PROXY, the entry the trusted proxy wrote, never one the client wrote) together with
 * the user name offered. Keyed by the address alone, a neighbour behind the same NAT could lock the
 * admin out with ten wrong guesses; now guesses lock out only their own (address, user) pair, so an
 * attacker would have to share the admin's address *and* know the configured user name.
 */
function loginClient(ctx: GatewayContext, credentials: Buffer | undefined): string {
  const text = credentials?.toString('utf8') ?? '';
  const colon = text.indexOf(':');
  const user = (colon < 0 ? text : text.slice(0, colon)).slice(0, 256);
  return `${addressKey(ctx.ip)}\n${user}`;
}

/** Why a request that changes state is refused, or undefined when it may go on. */
function crossSiteRefusal(ctx: GatewayContext): string | undefined {
  if (SAFE_METHODS.has(ctx.method)) return undefined;
  const source = originOf(ctx.get('origin') || ctx.get('referer'));
  // Not ctx.origin: since Koa 3 that is the request's Origin header, not the server's origin.
  if (source === undefined || source !== originOf(`${ctx.protocol}://${ctx.host}`)) {
    return 'Changes through the queue dashboard are accepted only from the dashboard itself (Origin or Referer of this gateway)';
  }
  // A form or text/plain body is what another site can send without a preflight; bull-board's own
  // writes are JSON, or have no body at all.
  const type = ctx.request.type.trim().toLowerCase();
  const hasBody = ctx.get('transfer-encoding') !== '' || Number(ctx.get('content-length') || '0') > 0;
  if (type === '' ? hasBody : type !== 'application/json') {
    return 'Changes through the queue dashboard are accepted as application/json only';
  }
  return undefined;
}

/** The serialized origin of a URL (scheme, host, port), or undefined for "null" and non-URLs. */
function originOf(url: string): string | undefined {
  if (url === '') return undefined;
  try {
    const origin = new URL(url).origin;
    return origin === 'null' ? undefined : origin;
  } catch {
    return undefined;
  }
}
