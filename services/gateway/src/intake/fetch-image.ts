import { got, HTTPError, MaxRedirectsError, RequestError, TimeoutError } from 'got';
import { ProblemError } from '@conveyor/shared/problem';
import { filteringAgents, isAddressRefused } from '../http/outbound.js';
import { tooLarge } from './read-input.js';

/**
 * Fetches an image URL without becoming an SSRF proxy (http/outbound.ts): the connecting agent checks the resolved
 * address of every connection (so DNS rebinding and every redirect hop are covered) and refuses
 * loopback, private, link-local (cloud metadata), CGNAT and unspecified addresses unless they are
 * explicitly allowed. Timeouts bound the connection and the whole exchange; the size cap applies
 * to the decoded bytes as they arrive.
 */
export interface FetchOptions {
  readonly maxBytes: number;
  readonly connectTimeoutMs: number;
  readonly totalTimeoutMs: number;
  readonly maxRedirects: number;
  /** IPs/CIDRs allowed even though they are not public unicast addresses. */
  readonly allowCidrs: readonly string[];
}

export type ImageFetcher = (url: URL) => Promise<Buffer>;

export function createImageFetcher(options: FetchOptions): ImageFetcher {
  const client = got.extend({
    agent: filteringAgents(options.allowCidrs),
    timeout: {
      lookup: options.connectTimeoutMs,
      connect: options.connectTimeoutMs,
      secureConnect: options.connectTimeoutMs,
      response: options.totalTimeoutMs,
    },
    maxRedirects: options.maxRedirects,
    retry: { limit: 0 },
    hooks: {
      // The first URL's rules hold for every hop: no credentials sent on, http and https only.
      beforeRedirect: [
        (next, response) => {
          // got drops a Location's credentials before this hook sees the URL; the header still has them.
          const location = response.headers.location;
          const target = location ? new URL(location, response.url) : undefined;
          if (target && (target.username || target.password || next.username || next.password)) {
            throw new ProblemError('url-not-allowed', 'The URL redirected to a URL with credentials; those are not fetched', {
              url: redacted(target),
            });
          }
        },
      ],
    },
    headers: { 'user-agent': 'Conveyor image fetcher', accept: 'image/*' },
  });

  return async (url) => {
    const chunks: Buffer[] = [];
    let total = 0;
    // Not AbortSignal.timeout(): got keeps its abort listener after the request ends, and a
    // signal that fires later throws from nowhere. This timer is cleared when the fetch is over.
    const deadline = new AbortController();
    const timer = setTimeout(() => deadline.abort(), options.totalTimeoutMs);
    try {
      const stream = client.stream(url, { signal: deadline.signal });
      stream.on('response', (response: { headers: Record<string, string | undefined> }) => {
        const declared = Number(response.headers['content-length'] ?? NaN);
        if (declared > options.maxBytes) stream.destroy(tooLarge(options.maxBytes));
      });
      for await (const chunk of stream) {
        total += (chunk as Buffer).length;
        if (total > options.maxBytes) {
          stream.destroy();
          throw tooLarge(options.maxBytes);
        }
        chunks.push(chunk as Buffer);
      }
    } catch (error) {
      throw toFetchProblem(error, url, options);
    } finally {
      clearTimeout(timer);
    }
    if (total === 0) throw new ProblemError('url-fetch-failed', 'The URL returned an empty body', { url: url.href });
    return Buffer.concat(chunks);
  };
}

function redacted(url: URL): string {
  const copy = new URL(url.href);
  copy.username = '';
  copy.password = '';
  return copy.href;
}

function toFetchProblem(error: unknown, url: URL, options: FetchOptions): ProblemError {
  if (error instanceof ProblemError) return error;
  const cause = error instanceof RequestError ? ((error.cause as Error | undefined) ?? error) : (error as Error);
  if (cause instanceof ProblemError) return cause;
  const message = cause.message;
  const context = { url: url.href };
  if (isAddressRefused(error)) {
    return new ProblemError('url-not-allowed', 'The URL resolves to a private, loopback or link-local address', context);
  }
  if (error instanceof HTTPError) {
    return new ProblemError('url-fetch-failed', `The URL answered HTTP ${error.response.statusCode}`, {
      ...context,
      upstreamStatus: error.response.statusCode,
    });
  }
  if (error instanceof MaxRedirectsError) {
    return new ProblemError('url-fetch-failed', `The URL redirected more than ${options.maxRedirects} times`, context);
  }
  if (error instanceof TimeoutError || (error as Error).name === 'TimeoutError' || (error as Error).name === 'AbortError') {
    return new ProblemError('url-fetch-failed', `Fetching the URL took longer than ${options.totalTimeoutMs} ms`, context);
  }
  if (error instanceof RequestError && error.code === 'ENOTFOUND') {
    return new ProblemError('url-fetch-failed', `The host ${url.hostname} does not resolve`, context);
  }
  if (/Unsupported protocol|redirect/i.test(message)) {
    return new ProblemError('url-not-allowed', 'The URL redirected to a location that is not http or https', context);
  }
  return new ProblemError('url-fetch-failed', `Fetching the URL failed: ${message}`, context);
}
