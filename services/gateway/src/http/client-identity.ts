import type { GatewayContext } from './context.js';

/**
 * Who a per-client share is counted against: the API key when keys are required (a key is one
 * tenant wherever it connects from), else the client address. The address is `ctx.ip`: the socket's
 * peer, or behind TRUST_PROXY the address the nearest trusted proxy saw (TRUST_PROXY_HOPS from the
 * end of X-Forwarded-For), never an entry the client wrote itself.
 */
export function clientOf(ctx: GatewayContext): string {
  return ctx.state.apiKey ? `key:${ctx.state.apiKey.id}` : `ip:${ctx.ip}`;
}
