import { request as httpRequest, type Agent as HttpAgent } from 'node:http';
import { request as httpsRequest, type Agent as HttpsAgent } from 'node:https';

/**
 * One delivery attempt: POST `body` to `url` and resolve with the receiver's status code.
 *
 * Only the status matters, so the answer's body is never read: the response is destroyed as soon
 * as its head has arrived (the connection with it; the agents do not keep connections alive
 * anyway). Nothing is decompressed and nothing is buffered, so a receiver answering 2xx with
 * gigabytes, or a gzip bomb, costs the gateway its socket buffers and nothing more, and a 2xx is
 * a delivery whatever follows it. Plain `node:http` rather than got, whose promise API reads
 * and decodes the whole answer before it resolves.
 *
 * One deadline bounds the whole attempt (DNS, connect, TLS, sending, the answer's head). Redirects
 * are not followed: a 3xx is an answer like any other non-2xx.
 */
export interface PostAgents {
  readonly http: HttpAgent;
  readonly https: HttpsAgent;
}

export class CallbackTimeoutError extends Error {
  constructor(timeoutMs: number) {
    super(`the receiver did not answer within ${timeoutMs} ms`);
    this.name = 'CallbackTimeoutError';
  }
}

export function postCallback(
  url: URL,
  body: string,
  headers: Record<string, string>,
  agents: PostAgents,
  timeoutMs: number,
): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const secure = url.protocol === 'https:';
    const options = {
      method: 'POST',
      headers: {
        ...headers,
        'content-length': String(Buffer.byteLength(body)),
        // Asked for plainly; a receiver that compresses anyway is not decoded either.
        'accept-encoding': 'identity',
      },
    };
    const req = secure
      ? httpsRequest(url, { ...options, agent: agents.https })
      : httpRequest(url, { ...options, agent: agents.http });
    let settled = false;
    const timer = setTimeout(() => req.destroy(new CallbackTimeoutError(timeoutMs)), timeoutMs);
    const finish = () => {
      settled = true;
      clearTimeout(timer);
    };
    req.once('response', (res) => {
      finish();
      const status = res.statusCode ?? 0;
      // The body is the receiver's business: drop it unread, with the connection.
      res.destroy();
      req.destroy();
      resolve(status);
    });
    req.on('error', (error) => {
      if (settled) return; // the destroy after the answer, or a late socket error: already decided
      finish();
      reject(error);
    });
    req.end(body);
  });
}
