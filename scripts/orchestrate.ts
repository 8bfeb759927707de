import path from 'node:path';
import {
  deployTraining,
  flowRunUrl,
  runDeployment,
  startPrefectServer,
  startWorker,
  waitForFlowRun,
  type PrefectServer,
  type PrefectWorker,
} from '../harness/prefect-server.js';
import { ROOT } from '../harness/service-process.js';

/**
 * `make orchestrate`: the training pipeline under Prefect 3 (orchestration/). Starts the Prefect
 * server (SQLite in ./data/prefect, UI on 127.0.0.1:PREFECT_PORT, default 4200), deploys the flow
 * (`conveyor-training/weekly`, cron `0 3 * * 1` in UTC, process work pool `conveyor`), starts a
 * worker, runs the flow once now and waits for it; then keeps the server and the worker up for the
 * schedule until Ctrl-C (ONCE=1: exits after the run, with its outcome as the exit code).
 *
 * Run through scripts/with-mlflow.ts, so MLFLOW_TRACKING_URI (and the account, for a server with
 * authentication) is set; the worker hands its environment to the flow runs and so to the trainer.
 * PARAMETERS='{"configs": ["…"]}' overrides the flow's defaults for this run; SCREENSHOTS=1 takes
 * the README's screenshots of the UI afterwards (`make orchestrate-screenshots`).
 */
const port = Number(process.env.PREFECT_PORT ?? 4200);
const once = process.env.ONCE === '1' || process.env.SCREENSHOTS === '1';
const parameters = JSON.parse(process.env.PARAMETERS ?? '{}') as Record<string, unknown>;
if (!process.env.MLFLOW_TRACKING_URI) {
  console.error('[orchestrate] MLFLOW_TRACKING_URI is not set: run it through `make orchestrate` (scripts/with-mlflow.ts)');
  process.exit(2);
}

let server: PrefectServer | undefined;
let worker: PrefectWorker | undefined;
let stopping = false;
async function shutdown(code: number): Promise<never> {
  stopping = true;
  await worker?.stop();
  await server?.stop();
  process.exit(code);
}
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    // The first signal stops everything in order; a second one while that runs changes nothing.
    if (stopping) return;
    console.error(`[orchestrate] ${signal}: stopping the worker and the Prefect server…`);
    void shutdown(0);
  });
}

try {
  console.error(`[orchestrate] starting the Prefect server on 127.0.0.1:${port} (data in data/prefect; ~30 s)…`);
  server = await startPrefectServer({ home: path.join(ROOT, 'data', 'prefect'), port, quiet: true });
  const deploymentId = deployTraining(server);
  console.error(`[orchestrate] deployed conveyor-training/weekly (${deploymentId}); starting a worker for pool conveyor`);
  // The server's environment is this process's (MLflow's address and account included): the worker's too.
  worker = startWorker(server);
  const submitted = await runDeployment(server, deploymentId, parameters);
  console.error(`[orchestrate] flow run ${submitted.name}: ${flowRunUrl(server, submitted.id)}`);
  const run = await waitForFlowRun(server, submitted.id, 6 * 3600_000);
  console.log(
    JSON.stringify({
      flowRun: run.name,
      id: run.id,
      state: run.state_name,
      message: run.state?.message,
      url: flowRunUrl(server, run.id),
    }),
  );
  if (process.env.SCREENSHOTS === '1' && run.state_type !== 'COMPLETED') {
    console.error('[orchestrate] no screenshots: the README shows a completed run');
  } else if (process.env.SCREENSHOTS === '1') {
    const { screenshotPrefect } = await import('./screenshot-prefect.js');
    await screenshotPrefect(server.url, run.id, deploymentId);
  }
  if (once) await shutdown(run.state_type === 'COMPLETED' ? 0 : 1);
  console.error(`[orchestrate] UI ${server.url}; the server and the worker stay up for the weekly schedule (Ctrl-C stops them)`);
  // Nothing else to do: the worker runs the scheduled flow runs; a worker that dies ends this too.
  worker.process.once('exit', (code) => {
    if (stopping) return;
    console.error(`[orchestrate] the worker exited (${code ?? 'signal'}); stopping`);
    void shutdown(1);
  });
} catch (error) {
  console.error(`[orchestrate] ${error instanceof Error ? error.message : String(error)}`);
  await shutdown(1);
}
