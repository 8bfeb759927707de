import { isIP } from 'node:net';
import { ProblemError } from '@conveyor/shared/problem';
import { isLiteralRefused, parseOutboundUrl } from '../http/outbound.js';

/**
 * The `Callback-Url` of a request, judged before anything is queued.
 *
 * - Given more than once it is a 400: Node joins repeated header lines into one "a, b" value,
 *   which would otherwise be taken for a single (odd) URL.
 * - Its rules are an image URL's (http/https, no credentials, at most 2048 characters).
 * - A literal address is judged now by the rule the filtering agents apply at connect time
 *   (request-filtering-agent: public unicast only, plus URL_ALLOW_CIDRS, minus IPv4-compatible
 *   IPv6): a loopback, private, link-local (cloud metadata) or unspecified literal is a 422 at the
 *   request instead of a delivery that can only fail. A name is still resolved and checked at every
 *   delivery, on the address actually connected to.
 */
export function parseCallbackUrl(values: readonly string[] | undefined, allowCidrs: readonly string[]): URL | undefined {
  if (!values || values.length === 0 || (values.length === 1 && values[0] === '')) return undefined;
  if (values.length > 1) {
    throw new ProblemError('invalid-request', `The Callback-Url header was given ${values.length} times; give one URL`);
  }
  const header = values[0]!;
  if (header.length > 2048) throw new ProblemError('invalid-request', 'The Callback-Url is longer than 2048 characters');
  const url = parseOutboundUrl(header);
  const host = url.hostname.replace(/^\[|\]$/g, '');
  if (isIP(host) !== 0 && isLiteralRefused(host, allowCidrs)) {
    throw new ProblemError(
      'url-not-allowed',
      'The Callback-Url names a private, loopback, link-local or unspecified address; callbacks go to public addresses only',
      { url: url.href },
    );
  }
  return url;
}
