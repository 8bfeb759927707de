import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { ROOT } from '../harness/service-process.js';

/**
 * The README's picture of the page at /, taken from a running system (`make run`, or compose) in
 * headless Chromium (Debian's package, driven by playwright-core): one digit classified, one
 * asynchronous job followed to its end. GATEWAY_URL (default http://localhost:8080); with API
 * keys required, CONVEYOR_API_KEY. Writes docs/images/page.png. Run through `make screenshot-page`.
 */
const gateway = process.env.GATEWAY_URL ?? 'http://localhost:8080';
const out = path.join(ROOT, 'docs', 'images', 'page.png');
mkdirSync(path.dirname(out), { recursive: true });
const image = path.join(ROOT, 'docs', 'examples', 'seven.png');

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 1100 }, deviceScaleFactor: 1 });
  await page.goto(`${gateway}/`);
  if (process.env.CONVEYOR_API_KEY) {
    await page.locator('details summary').click();
    await page.getByLabel(/API key/).fill(process.env.CONVEYOR_API_KEY);
    await page.getByLabel(/API key/).dispatchEvent('change');
  }
  await page.getByLabel('Image file').setInputFiles(image);
  await page.getByLabel(/Queue it/).check();
  await page.getByRole('button', { name: 'Classify' }).click();
  await page.locator('#jobs li .state-completed').first().waitFor({ timeout: 30_000 });
  await page.getByLabel(/Queue it/).uncheck();
  await page.getByRole('button', { name: 'Classify' }).click();
  await page.locator('#result').waitFor({ state: 'visible', timeout: 30_000 });
  await page.screenshot({ path: out, fullPage: true });
  console.log(`wrote ${path.relative(ROOT, out)}`);
} finally {
  await browser.close();
}
