import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type Router from '@koa/router';
import type { GatewayState } from '../http/context.js';
import { openApiDocument, type DocumentOptions } from '../openapi/openapi.document.js';

const require = createRequire(import.meta.url);
/** The gateway's static files (the page at `/`, the reference page), beside src/ and dist/. */
export const PUBLIC_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../public');

/**
 * Each page's Content-Security-Policy: everything from this origin only. Redoc's bundle injects
 * its styles (styled-components) and runs its search index in a blob: worker, so the reference
 * page allows those two and nothing else.
 */
export const DOCS_CSP =
  "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; " +
  "worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/** GET /openapi.json (generated once, at start-up) and the reference page at /docs. */
export function registerDocsRoutes(router: Router<GatewayState>, options: Omit<DocumentOptions, 'version'>): void {
  const version = (require('../../package.json') as { version: string }).version;
  const document = JSON.stringify(openApiDocument({ ...options, version }));
  // Read once: a missing file fails the start, not a request.
  const files = {
    '/docs': { type: 'text/html; charset=utf-8', body: readFileSync(path.join(PUBLIC_DIR, 'docs.html')) },
    '/docs/docs.js': { type: 'text/javascript; charset=utf-8', body: readFileSync(path.join(PUBLIC_DIR, 'docs.js')) },
    '/docs/redoc.standalone.js': {
      type: 'text/javascript; charset=utf-8',
      body: readFileSync(require.resolve('redoc/bundles/redoc.standalone.js')),
    },
  };

  router.get('/openapi.json', (ctx) => {
    ctx.type = 'application/json';
    ctx.set('Access-Control-Allow-Origin', '*'); // a public description: any tool may read it
    ctx.body = document;
  });
  for (const [route, file] of Object.entries(files)) {
    router.get(route, (ctx) => {
      ctx.type = file.type;
      ctx.set('Content-Security-Policy', DOCS_CSP);
      ctx.set('X-Content-Type-Options', 'nosniff');
      ctx.set('Cache-Control', 'public, max-age=300');
      ctx.body = file.body;
    });
  }
}
