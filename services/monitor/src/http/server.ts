import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Logger } from '@conveyor/shared/logger';
import type { Registry } from 'prom-client';

/**
 * The monitor's small HTTP surface: GET /drift (current state per model version and feature),
 * GET /metrics (Prometheus), POST /reports (write a report now), GET /reports/drift.csv|png (the
 * latest report), GET /health. No framework: five routes, no request bodies.
 */
export interface MonitorHttpDeps {
  readonly snapshot: () => Promise<unknown>;
  readonly registry: Registry;
  readonly writeReport: () => Promise<{ csv: string; png: string }>;
  readonly redisPing: () => Promise<unknown>;
  readonly log: Logger;
}

export function createMonitorServer(deps: MonitorHttpDeps): Server {
  let latest: { csv: string; png: string } | undefined;
  const json = (res: ServerResponse, status: number, body: unknown, type = 'application/json') => {
    res.writeHead(status, { 'content-type': type });
    res.end(JSON.stringify(body));
  };
  const handler = async (req: IncomingMessage, res: ServerResponse) => {
    const route = `${req.method ?? 'GET'} ${(req.url ?? '/').split('?')[0]}`;
    switch (route) {
      case 'GET /health':
        return json(res, 200, { status: 'ok' });
      case 'GET /ready':
        try {
          await deps.redisPing();
          return json(res, 200, { status: 'ready' });
        } catch {
          return json(res, 503, { status: 'not-ready' });
        }
      case 'GET /drift':
        return json(res, 200, await deps.snapshot());
      case 'GET /metrics':
        res.writeHead(200, { 'content-type': deps.registry.contentType });
        return res.end(await deps.registry.metrics());
      case 'POST /reports':
        latest = await deps.writeReport();
        return json(res, 201, latest);
      case 'GET /reports/drift.csv':
      case 'GET /reports/drift.png': {
        latest ??= await deps.writeReport();
        const png = route.endsWith('.png');
        res.writeHead(200, { 'content-type': png ? 'image/png' : 'text/csv; charset=utf-8' });
        return res.end(await readFile(png ? latest.png : latest.csv));
      }
      default:
        return json(
          res,
          404,
          { type: '/problems/not-found', title: 'Not found', status: 404, detail: `No route ${route}` },
          'application/problem+json',
        );
    }
  };
  return createServer((req, res) => {
    handler(req, res).catch((error: unknown) => {
      deps.log.error({ err: error, url: req.url }, 'monitor request failed');
      if (!res.headersSent)
        json(
          res,
          500,
          { type: '/problems/internal', title: 'Internal error', status: 500, detail: 'Internal error' },
          'application/problem+json',
        );
      else res.end();
    });
  });
}
