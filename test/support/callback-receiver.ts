import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';

/**
 * A real HTTP server receiving callbacks in tests: it records every request, answers `/ok` with
 * 204, and `/flaky` with 500 the first time and 204 after. Listens on every interface, so that a
 * gateway that let 127.0.0.2 through would reach it.
 */
export interface Delivery {
  readonly path: string;
  readonly headers: IncomingHttpHeaders;
  readonly body: string;
  readonly remote: string | undefined;
}

export interface CallbackReceiver {
  readonly port: number;
  readonly deliveries: Delivery[];
  url(path: string, host?: string): string;
  close(): Promise<void>;
}

export async function startCallbackReceiver(): Promise<CallbackReceiver> {
  const deliveries: Delivery[] = [];
  const seen = new Map<string, number>();
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const path = (req.url ?? '/').split('?')[0]!;
      deliveries.push({
        path,
        headers: req.headers,
        body: Buffer.concat(chunks).toString('utf8'),
        remote: req.socket.localAddress,
      });
      const count = (seen.get(path) ?? 0) + 1;
      seen.set(path, count);
      const status = path === '/flaky' && count === 1 ? 500 : 204;
      res.writeHead(status).end();
    });
  });
  server.keepAliveTimeout = 100;
  await new Promise<void>((resolve) => server.listen(0, '0.0.0.0', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return {
    port,
    deliveries,
    url: (path, host = '127.0.0.1') => `http://${host}:${port}${path}`,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
