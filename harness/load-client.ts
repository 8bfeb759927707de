import { Agent, request } from 'node:http';

/**
 * A lean HTTP client for driving the gateway from benchmarks and demos: keep-alive connections and
 * pre-built bodies, so the load generator spends as little of the shared CPU as possible.
 */
export interface PredictClient {
  /** POSTs a body to the client's path and resolves with the status code (the body is discarded). */
  send(body: Buffer, contentType: string): Promise<number>;
  close(): void;
}

/** `path`: /v1/predict (the default model), or a model's own route such as /v1/models/moderation/predict. */
export function predictClient(port: number, maxSockets: number, path = '/v1/predict'): PredictClient {
  const agent = new Agent({ keepAlive: true, maxSockets });
  return {
    send: (body, contentType) =>
      new Promise<number>((resolve, reject) => {
        const req = request(
          {
            host: '127.0.0.1',
            port,
            path,
            method: 'POST',
            agent,
            headers: { 'content-type': contentType, 'content-length': body.length },
          },
          (res) => {
            res.resume();
            res.on('end', () => resolve(res.statusCode ?? 0));
          },
        );
        req.on('error', reject);
        req.end(body);
      }),
    close: () => agent.destroy(),
  };
}

/** A multipart/form-data body with the image in the `file` field. */
export function multipartBody(bytes: Buffer): { body: Buffer; type: string } {
  const boundary = 'conveyorload';
  const head = `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="image"\r\nContent-Type: application/octet-stream\r\n\r\n`;
  return {
    body: Buffer.concat([Buffer.from(head), bytes, Buffer.from(`\r\n--${boundary}--\r\n`)]),
    type: `multipart/form-data; boundary=${boundary}`,
  };
}
