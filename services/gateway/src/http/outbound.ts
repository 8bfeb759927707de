import { isIP } from 'node:net';
import { RequestError } from 'got';
import ipaddr from 'ipaddr.js';
import { RequestFilteringHttpAgent, RequestFilteringHttpsAgent } from 'request-filtering-agent';
import { ProblemError } from '@conveyor/shared/problem';

/**
 * Every request the gateway makes to a URL a client named (an image URL, a callback) follows the
 * rules here, so the gateway never becomes an SSRF proxy and a callback cannot reach what an image
 * URL may not:
 *
 * - the URL: http or https, no credentials (`parseOutboundUrl`);
 * - the address: public unicast only, plus URL_ALLOW_CIDRS, minus IPv4-compatible IPv6. The
 *   filtering agents check the address of every connection actually made (DNS rebinding and every
 *   redirect hop included); `isLiteralRefused` applies the same rule early to an IP literal.
 */

/**
 * The agents every outgoing request of the gateway goes through (image URLs, callbacks): one set
 * of address rules for both.
 */
export function filteringAgents(allowCidrs: readonly string[]) {
  const filter = {
    allowIPAddressList: [...allowCidrs],
    // IPv4-compatible IPv6 (::a.b.c.d, deprecated by RFC 4291): ipaddr.js calls it unicast, yet it
    // embeds an IPv4 address (`http://[::127.0.0.1]/` is ::7f00:1). The other embedding forms
    // (IPv4-mapped, 6to4, Teredo, NAT64) are already refused as non-unicast.
    denyIPAddressList: [IPV4_COMPATIBLE],
    keepAlive: false,
  };
  return { http: new RequestFilteringHttpAgent(filter), https: new RequestFilteringHttpsAgent(filter) };
}

const IPV4_COMPATIBLE = '::/96';

/** Whether a request failed because the filtering agents refused the address it resolved to. */
export function isAddressRefused(error: unknown): boolean {
  const cause = error instanceof RequestError ? ((error.cause as Error | undefined) ?? error) : (error as Error | undefined);
  return /is not allowed/.test(cause?.message ?? '');
}

/** Whether the filtering agents would refuse to connect to this IP literal (the same rule, applied early). */
export function isLiteralRefused(address: string, allowCidrs: readonly string[]): boolean {
  let parsed: ipaddr.IPv4 | ipaddr.IPv6;
  try {
    parsed = ipaddr.parse(address);
  } catch {
    return true;
  }
  if (allowCidrs.some((entry) => matches(parsed, address, entry))) return false;
  if (parsed.range() !== 'unicast') return true;
  return matches(parsed, address, IPV4_COMPATIBLE);
}

function matches(parsed: ipaddr.IPv4 | ipaddr.IPv6, raw: string, entry: string): boolean {
  if (isIP(entry) !== 0) return entry === raw;
  try {
    const cidr = ipaddr.parseCIDR(entry);
    return parsed.kind() === cidr[0].kind() && parsed.match(cidr);
  } catch {
    return false;
  }
}

/** A URL the gateway may request: absolute, http or https, without credentials. */
export function parseOutboundUrl(text: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new ProblemError('invalid-request', 'The url is not a valid absolute URL');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new ProblemError('url-not-allowed', `Only http and https URLs are fetched, not ${url.protocol.replace(':', '')}`);
  }
  if (url.username || url.password) throw new ProblemError('url-not-allowed', 'URLs with credentials are not fetched');
  return url;
}
