import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { chromium, type Page } from 'playwright-core';
import { z } from 'zod';
import { checkMlflowAuth, loadConfigOrExit, mlflowAuthShape, mlflowCredentials } from '@conveyor/shared/config';
import { MlflowClient } from '@conveyor/shared/mlflow/client';
import { ROOT } from '../harness/service-process.js';

/**
 * Screenshots of the real MLflow UI for the README, taken in headless Chromium (Debian's package;
 * playwright-core drives it, nothing is downloaded): the experiment's runs, their accuracy charts,
 * and the registered model with its versions and aliases.
 * Run through `make screenshots`.
 */
const config = loadConfigOrExit(
  z.object({ MLFLOW_TRACKING_URI: z.url().describe('set by make screenshots'), ...mlflowAuthShape }).superRefine(checkMlflowAuth),
);
const uri = config.MLFLOW_TRACKING_URI;
const experimentName = process.env.MLFLOW_EXPERIMENT ?? 'conveyor-digits';
const modelName = process.env.MODEL_NAME ?? 'digits';
const out = path.join(ROOT, 'docs', 'images');
mkdirSync(out, { recursive: true });

// On a server with authentication, the same account for the REST calls and the browser (Basic auth).
const credentials = mlflowCredentials(config);
const client = new MlflowClient(uri, { credentials });
const experiment = await client.getExperimentByName(experimentName);
if (!experiment) throw new Error(`no experiment ${experimentName}: run make train first`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
  ],
});
/** MLflow 3 opens in its GenAI view with an assistant panel; switch to model training and close it. */
async function tidy(page: Page): Promise<void> {
  const training = page.getByText('Model training').first();
  if (await training.isVisible().catch(() => false)) await training.click();
  const close = page.locator('button[aria-label="Close"]').first();
  if (await close.isVisible().catch(() => false)) await close.click();
  await page.waitForTimeout(500);
}
try {
  const page = await browser.newPage({
    viewport: { width: 1500, height: 820 },
    ...(credentials ? { httpCredentials: credentials } : {}),
  });
  await page.goto(`${uri}/#/experiments/${experiment.experimentId}/runs`, { waitUntil: 'domcontentloaded' });
  await page.getByText('Model training').first().waitFor({ timeout: 60_000 });
  await tidy(page);
  await page.goto(`${uri}/#/experiments/${experiment.experimentId}/runs`, { waitUntil: 'domcontentloaded' });
  await page.getByText('cnn-augmented').first().waitFor({ timeout: 60_000 });
  await page.waitForTimeout(1500);
  await page.screenshot({ path: path.join(out, 'mlflow-runs.png') });

  // The chart view, narrowed to the accuracy metrics: training curves per epoch and final figures.
  await page.goto(`${uri}/#/experiments/${experiment.experimentId}/runs?compareRunsMode=CHART`, {
    waitUntil: 'domcontentloaded',
  });
  const search = page.getByPlaceholder('Search metric charts');
  await search.waitFor({ timeout: 60_000 });
  await tidy(page);
  await search.fill('accuracy');
  await page.waitForTimeout(2500);
  await page.screenshot({ path: path.join(out, 'mlflow-charts.png') });

  await page.goto(`${uri}/#/models/${modelName}`, { waitUntil: 'domcontentloaded' });
  await page.getByText('Version 1').first().waitFor({ timeout: 60_000 });
  await tidy(page);
  await page.waitForTimeout(1000);
  await page.screenshot({ path: path.join(out, 'mlflow-registry.png') });
  console.log(`screenshots written to ${path.relative(ROOT, out)}`);
} finally {
  await browser.close();
}
