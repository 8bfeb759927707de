import { timingSafeEqual } from 'node:crypto';
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { KoaAdapter } from '@bull-board/koa';
import type { Queue } from 'bullmq';
import type { Middleware } from 'koa';
import { ProblemError } from '@conveyor/shared/problem';
import type { GatewayState } from './context.js';
import { sendProblem } from './problem.middleware.js';

/**
 * The Redis queue dashboard (bull-board) on the gateway at /admin/queues, behind HTTP Basic auth.
 * It is only mounted when credentials are configured: never open by default on a public port.
 */
export const DASHBOARD_PATH = '/admin/queues';

export function dashboard(queues: readonly Queue[], credentials: { user: string; password: string }): Middleware<GatewayState> {
  const serverAdapter = new KoaAdapter();
  serverAdapter.setBasePath(DASHBOARD_PATH);
  createBullBoard({
    queues: queues.map((q) => new BullMQAdapter(q)),
    serverAdapter,
    options: { uiConfig: { boardTitle: 'Conveyor queues' } },
  });
  const board = serverAdapter.registerPlugin() as unknown as Middleware<GatewayState>;
  const expected = Buffer.from(`${credentials.user}:${credentials.password}`);
  return async (ctx, next) => {
    if (ctx.path !== DASHBOARD_PATH && !ctx.path.startsWith(`${DASHBOARD_PATH}/`)) {
      await next();
      return;
    }
    const header = ctx.get('authorization');
    const offered = header.startsWith('Basic ') ? Buffer.from(header.slice(6), 'base64') : Buffer.alloc(0);
    if (offered.length !== expected.length || !timingSafeEqual(offered, expected)) {
      ctx.set('WWW-Authenticate', 'Basic realm="Conveyor dashboard", charset="UTF-8"');
      sendProblem(ctx, new ProblemError('unauthorized', 'The queue dashboard needs its credentials'));
      return;
    }
    await board(ctx, next);
  };
}
