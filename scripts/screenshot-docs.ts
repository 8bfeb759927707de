import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { ROOT } from '../harness/service-process.js';

/**
 * A picture of the docs site's home page and of one page (docs/images/docs-home.png,
 * docs-configuration.png), from the built site (`make docs` first), served from
 * docs/.vitepress/dist on a free loopback port and taken in headless Chromium (Debian's package,
 * driven by playwright-core). Run through `make docs-screenshot`.
 */
const DIST = path.join(ROOT, 'docs', '.vitepress', 'dist');
if (!existsSync(path.join(DIST, 'index.html'))) {
  console.error('no built site in docs/.vitepress/dist: run `make docs` first');
  process.exit(1);
}
const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript',
  '.css': 'text/css',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
  '.woff2': 'font/woff2',
  '.json': 'application/json',
};

/** The file a URL names in the built site: cleanUrls maps /configuration to configuration.html. */
function fileFor(url: string): string | undefined {
  const clean = decodeURIComponent(new URL(url, 'http://x').pathname);
  const candidates = clean.endsWith('/') ? [`${clean}index.html`] : [clean, `${clean}.html`];
  for (const candidate of candidates) {
    const file = path.join(DIST, path.normalize(candidate));
    if (file.startsWith(DIST) && existsSync(file) && !file.endsWith(path.sep)) return file;
  }
  return undefined;
}

const server = http.createServer((req, res) => {
  const file = fileFor(req.url ?? '/');
  if (!file) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { 'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream' });
  res.end(readFileSync(file));
});
await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
const outDir = path.join(ROOT, 'docs', 'images');
mkdirSync(outDir, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 1 });
  // Every request the site makes must be to itself: the site is meant to work offline.
  const elsewhere: string[] = [];
  page.on('request', (r) => {
    if (!r.url().startsWith(base) && !r.url().startsWith('data:')) elsewhere.push(r.url());
  });
  for (const [route, name] of [
    ['/', 'docs-home.png'],
    ['/configuration', 'docs-configuration.png'],
  ] as const) {
    await page.goto(`${base}${route}`, { waitUntil: 'networkidle' });
    await page.screenshot({ path: path.join(outDir, name) });
    console.log(`wrote docs/images/${name}`);
  }
  if (elsewhere.length > 0) {
    console.error(`the site asked for resources elsewhere: ${elsewhere.join(', ')}`);
    process.exitCode = 1;
  }
} finally {
  await browser.close();
  server.close();
}
