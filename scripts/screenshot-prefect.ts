import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { chromium } from 'playwright-core';
import { ROOT } from '../harness/service-process.js';

/**
 * Screenshots of the real Prefect UI for the README, in headless Chromium (Debian's package, driven
 * by playwright-core; nothing is downloaded): a flow run of the training flow with its graph of task
 * runs, and the deployment with its weekly schedule. Called by `make orchestrate-screenshots` after
 * its run, or by hand: `tsx scripts/screenshot-prefect.ts <ui url> <flow run id> <deployment id>`.
 */
export async function screenshotPrefect(ui: string, flowRunId: string, deploymentId: string): Promise<void> {
  const out = path.join(ROOT, 'docs', 'images');
  mkdirSync(out, { recursive: true });
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-sync', '--no-first-run'],
  });
  try {
    const tasks = await taskRunCount(ui, flowRunId);
    const page = await browser.newPage({ viewport: { width: 1500, height: 900 } });
    await page.goto(`${ui}/runs/flow-run/${flowRunId}`, { waitUntil: 'domcontentloaded' });
    // The page is ready when the header shows the run's final state and all its task runs; the
    // graph is a canvas (no text to wait for) drawn from the same data once its container is laid out.
    await page.getByText('Completed').first().waitFor({ timeout: 60_000 });
    await page.getByText(`${tasks} Task runs`).first().waitFor({ timeout: 60_000 });
    await page.locator('.flow-run-graph, [class*="flow-run-graph"]').first().locator('canvas').waitFor({ timeout: 60_000 });
    await page.waitForLoadState('networkidle');
    await page.screenshot({ path: path.join(out, 'prefect-flow-run.png') });

    await page.goto(`${ui}/deployments/deployment/${deploymentId}`, { waitUntil: 'domcontentloaded' });
    await page
      .getByText('0 3 * * 1')
      .or(page.getByText(/At 03:00 AM/i))
      .first()
      .waitFor({ timeout: 60_000 });
    await page.waitForLoadState('networkidle');
    await page.screenshot({ path: path.join(out, 'prefect-deployment.png') });
    console.error(`[screenshots] prefect-flow-run.png, prefect-deployment.png written to ${path.relative(ROOT, out)}`);
  } finally {
    await browser.close();
  }
}

/** The flow run's task runs once all of them are final (their states arrive as events, a moment late). */
async function taskRunCount(ui: string, flowRunId: string): Promise<number> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const response = await fetch(`${ui}/api/task_runs/filter`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ flow_runs: { id: { any_: [flowRunId] } } }),
    });
    const runs = (await response.json()) as { state_type: string | null }[];
    if (runs.length > 0 && runs.every((r) => r.state_type === 'COMPLETED')) return runs.length;
    if (Date.now() > deadline) throw new Error(`the task runs of ${flowRunId} are not all Completed`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const [ui, flowRunId, deploymentId] = process.argv.slice(2);
  if (!ui || !flowRunId || !deploymentId) {
    console.error('usage: screenshot-prefect <ui url> <flow run id> <deployment id>');
    process.exit(2);
  }
  await screenshotPrefect(ui, flowRunId, deploymentId);
}
