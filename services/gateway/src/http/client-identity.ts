import { isIPv6 } from 'node:net';
import type { GatewayContext } from './context.js';

/**
 * Who a per-client share is counted against: the API key when keys are required (a key is one
 * tenant wherever it connects from), else the client address. The address is `ctx.ip`: the socket's
 * peer, or behind TRUST_PROXY the address the nearest trusted proxy saw (TRUST_PROXY_HOPS from the
 * end of X-Forwarded-For), never an entry the client wrote itself.
 */
export function clientOf(ctx: GatewayContext): string {
  return ctx.state.apiKey ? `key:${ctx.state.apiKey.id}` : `ip:${addressKey(ctx.ip)}`;
}

/**
 * The unit a per-address limit counts: an IPv4 address (also when written IPv4-mapped, as a
 * dual-stack socket reports it), or an IPv6 /64. A single IPv6 subscriber is usually given a whole
 * /64 (2^64 addresses): counted per address, it could open a fresh share from each.
 */
export function addressKey(address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return mapped[1]!;
  if (!isIPv6(address)) return address;
  const [head = '', tail] = address.toLowerCase().split('%')[0]!.split('::');
  const left = head === '' ? [] : head.split(':');
  const right = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = tail === undefined ? left : [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right];
  return `${groups
    .slice(0, 4)
    .map((g) => g.replace(/^0+(?=.)/, ''))
    .join(':')}::/64`;
}
