import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';

/** A local HTTP server standing in for the internet in URL-input tests. */
export interface UrlServer {
  readonly port: number;
  url(path: string, host?: string): string;
  close(): Promise<void>;
}

export async function startUrlServer(files: Record<string, { type: string; body: Buffer }>): Promise<UrlServer> {
  let port = 0;
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]!;
    const file = files[path];
    if (file) {
      res.writeHead(200, { 'content-type': file.type, 'content-length': file.body.length });
      res.end(file.body);
      return;
    }
    switch (path) {
      case '/redirect-ok':
        res.writeHead(302, { location: '/seven.png' }).end();
        return;
      case '/redirect-private':
        // 127.0.0.2 is loopback too, but not on the gateway's allow-list.
        res.writeHead(302, { location: `http://127.0.0.2:${port}/seven.png` }).end();
        return;
      case '/redirect-credentials':
        // Same allowed host: only the credentials in the target make it wrong.
        res.writeHead(302, { location: `http://user:secret@127.0.0.1:${port}/seven.png` }).end();
        return;
      case '/redirect-file':
        res.writeHead(302, { location: 'file:///etc/passwd' }).end();
        return;
      case '/slow':
        res.writeHead(200, { 'content-type': 'image/png' });
        res.write(randomBytes(16)); // then nothing: the gateway must give up
        return;
      case '/endless': {
        res.writeHead(200, { 'content-type': 'image/jpeg' }); // chunked, no length
        const chunk = randomBytes(64 * 1024);
        const pump = () => {
          while (res.write(chunk)) {
            /* until the socket pushes back */
          }
        };
        res.on('drain', pump);
        res.on('close', () => res.off('drain', pump));
        pump();
        return;
      }
      case '/declared-huge':
        res.writeHead(200, { 'content-type': 'image/jpeg', 'content-length': 50 * 1024 * 1024 });
        res.write(randomBytes(1024));
        return;
      default:
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not here');
    }
  });
  server.keepAliveTimeout = 100;
  // All interfaces, so that 127.0.0.2 would connect if the gateway let it.
  await new Promise<void>((resolve) => server.listen(0, '0.0.0.0', resolve));
  const address = server.address();
  port = typeof address === 'object' && address ? address.port : 0;
  return {
    port,
    url: (path, host = '127.0.0.1') => `http://${host}:${port}${path}`,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
