import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Logger } from '@conveyor/shared/logger';
import { problemCatalogue, problemType, type ProblemSlug } from '@conveyor/shared/problem';
import type { Registry } from 'prom-client';

/**
 * The monitor's small HTTP surface: GET /drift (current state per model version and feature) and
 * GET /drift/{model} (one model's versions), GET /metrics (Prometheus), POST /reports (write a
 * report now), GET /reports/drift.csv|png (the latest report), GET /health. No framework: a few
 * routes, no request bodies.
 *
 * Reads are open (they are what Prometheus and dashboards scrape); the one write needs the bearer
 * token. Without a token configured, writes are refused outright rather than allowed from loopback:
 * a loopback peer is not an identity (any local process, a reverse proxy on the host, a browser on
 * the operator's machine posting cross-site to 127.0.0.1). Answers name reports by URL, never by
 * their place on the server's disk.
 */
export interface MonitorHttpDeps {
  /** GET /drift: every model version, or one serving name's (an empty list when it has none). */
  readonly driftView: (model?: string) => Promise<{ models: readonly unknown[] }>;
  readonly registry: Registry;
  /** Writes the report files and returns their paths on disk (kept here, never sent). */
  readonly writeReport: () => Promise<{ csv: string; png: string }>;
  /** The bearer token writes need; without one, writes are refused. */
  readonly writeToken?: string;
  readonly redisPing: () => Promise<unknown>;
  readonly log: Logger;
}

/** Where the latest report is served (GET), as POST /reports answers. */
export const REPORT_URLS = { csv: '/reports/drift.csv', png: '/reports/drift.png' } as const;

function json(res: ServerResponse, status: number, body: unknown, type = 'application/json'): void {
  res.writeHead(status, { 'content-type': type });
  res.end(JSON.stringify(body));
}

function problem(res: ServerResponse, slug: ProblemSlug, detail: string, headers: Record<string, string> = {}): void {
  const { status, title } = problemCatalogue[slug];
  res.writeHead(status, { 'content-type': 'application/problem+json', ...headers });
  res.end(JSON.stringify({ type: problemType(slug), title, status, detail }));
}

export function createMonitorServer(deps: MonitorHttpDeps): Server {
  let latest: { csv: string; png: string } | undefined;
  const expectedToken = deps.writeToken === undefined ? undefined : sha256(deps.writeToken);
  /** Answers and returns false when the request may not write. */
  const authorizeWrite = (req: IncomingMessage, res: ServerResponse): boolean => {
    if (expectedToken === undefined) {
      problem(res, 'forbidden', 'Writes to the monitor are disabled: set MONITOR_TOKEN to allow them');
      return false;
    }
    const offered = /^Bearer +(\S+) *$/i.exec(req.headers.authorization ?? '')?.[1];
    // Digests have one length whatever was offered: the comparison reveals neither the length nor a prefix.
    if (offered === undefined || !timingSafeEqual(sha256(offered), expectedToken)) {
      const error = offered === undefined ? '' : ', error="invalid_token"';
      problem(res, 'unauthorized', 'Writes to the monitor need its bearer token', {
        'www-authenticate': `Bearer realm="Conveyor monitor"${error}`,
      });
      return false;
    }
    return true;
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
        return json(res, 200, await deps.driftView());
      case 'GET /metrics':
        res.writeHead(200, { 'content-type': deps.registry.contentType });
        return res.end(await deps.registry.metrics());
      case 'POST /reports':
        if (!authorizeWrite(req, res)) return;
        latest = await deps.writeReport();
        return json(res, 201, REPORT_URLS);
      case 'GET /reports/drift.csv':
      case 'GET /reports/drift.png': {
        latest ??= await deps.writeReport();
        const png = route.endsWith('.png');
        res.writeHead(200, { 'content-type': png ? 'image/png' : 'text/csv; charset=utf-8' });
        return res.end(await readFile(png ? latest.png : latest.csv));
      }
      default: {
        const model = /^GET \/drift\/([^/]+)$/.exec(route)?.[1];
        if (model === undefined) return problem(res, 'not-found', `No route ${route}`);
        let name: string;
        try {
          name = decodeURIComponent(model);
        } catch {
          return problem(res, 'invalid-request', 'The model name is not valid percent-encoding');
        }
        const view = await deps.driftView(name);
        if (view.models.length === 0)
          return problem(res, 'not-found', `No predictions of a model named ${JSON.stringify(name.slice(0, 64))} have been seen`);
        return json(res, 200, view);
      }
    }
  };
  return createServer((req, res) => {
    handler(req, res).catch((error: unknown) => {
      deps.log.error({ err: error, url: req.url }, 'monitor request failed');
      if (!res.headersSent) problem(res, 'internal', 'Internal error');
      else res.end();
    });
  });
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}
