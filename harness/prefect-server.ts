import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { freePort } from './free-port.js';
import { ROOT } from './service-process.js';
import { venvBin } from './venv.js';

/**
 * The orchestrator's processes: a Prefect 3 server (SQLite under PREFECT_HOME, offline: no
 * analytics, no update checks), the training flow's deployment (orchestration/deploy.py) and a
 * process worker — all from the pinned Prefect in .venv/prefect (harness/venv.sh prefect).
 * Used by `make orchestrate` (scripts/orchestrate.ts) and the orchestration tests.
 */
export const DEPLOYMENT = 'conveyor-training/weekly';
export const WORK_POOL = 'conveyor';

export function ensurePrefectInstalled(): string {
  return venvBin('prefect', 'prefect');
}

/** The settings every Prefect process of one installation shares: its home, its API, offline. */
export function prefectEnv(home: string, apiUrl: string, base: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  return {
    ...base,
    PREFECT_HOME: home,
    PREFECT_API_URL: apiUrl,
    PREFECT_UI_URL: apiUrl.replace(/\/api$/, ''),
    PREFECT_SERVER_ANALYTICS_ENABLED: 'false',
    DO_NOT_TRACK: '1',
    // A profile of the user's (Prefect Cloud, another server) must not redirect these processes.
    PREFECT_PROFILES_PATH: path.join(home, 'profiles.toml'),
    // The worker asks for work every 2 s instead of 10: a run on demand starts without a wait.
    PREFECT_WORKER_QUERY_SECONDS: '2',
    PYTHONUNBUFFERED: '1',
  };
}

export interface PrefectServer {
  readonly url: string;
  readonly apiUrl: string;
  readonly home: string;
  readonly env: NodeJS.ProcessEnv;
  stop(): Promise<void>;
}

export async function startPrefectServer(options: { home: string; port?: number; quiet?: boolean }): Promise<PrefectServer> {
  const prefect = ensurePrefectInstalled();
  mkdirSync(options.home, { recursive: true });
  const port = options.port ?? (await freePort());
  const url = `http://127.0.0.1:${port}`;
  const env = prefectEnv(options.home, `${url}/api`);
  const child = spawn(prefect, ['server', 'start', '--host', '127.0.0.1', '--port', String(port)], {
    cwd: options.home,
    stdio: ['ignore', options.quiet ? 'ignore' : 'inherit', 'pipe'],
    env,
    // Its own process group: the server's uvicorn and services go with it.
    detached: true,
  });
  const errors: string[] = [];
  child.stderr.on('data', (d: Buffer) => {
    errors.push(d.toString());
    // Only the tail is ever shown; a server that runs for weeks must not hoard its log.
    if (errors.length > 200) errors.shift();
    if (!options.quiet) process.stderr.write(d);
  });
  let stopped: Promise<void> | undefined;
  const stop = () => (stopped ??= stopGroup(child));
  // About 30 s on two cores (migrations on a new database, then the UI's static files).
  const deadline = Date.now() + 180_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null)
      throw new Error(`prefect server exited with ${child.exitCode}:\n${errors.join('').slice(-3000)}`);
    const ok = await fetch(`${url}/api/health`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) return { url, apiUrl: `${url}/api`, home: options.home, env, stop };
    await new Promise((r) => setTimeout(r, 500));
  }
  await stop();
  throw new Error(`prefect server did not answer /api/health within 180 s:\n${errors.join('').slice(-3000)}`);
}

/** SIGTERM to the whole group (the server forks), then waits for the leader. */
async function stopGroup(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
  const pid = child.pid;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const signal = (s: NodeJS.Signals) => {
    try {
      process.kill(-pid, s);
    } catch {
      // The group is gone already.
    }
  };
  signal('SIGTERM');
  const timer = setTimeout(() => signal('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

/**
 * Deploys the training flow (work pool + `weekly` deployment with its cron schedule); returns the
 * deployment's id. `parameters` become the deployment's defaults.
 */
export function deployTraining(
  server: PrefectServer,
  options: { pool?: string; name?: string; cron?: string; parameters?: Record<string, unknown> } = {},
): string {
  const python = path.join(path.dirname(ensurePrefectInstalled()), 'python');
  const result = spawnSync(
    python,
    [
      path.join(ROOT, 'orchestration/deploy.py'),
      '--pool',
      options.pool ?? WORK_POOL,
      ...(options.name ? ['--name', options.name] : []),
      ...(options.cron ? ['--cron', options.cron] : []),
      '--parameters',
      JSON.stringify(options.parameters ?? {}),
    ],
    { cwd: ROOT, encoding: 'utf8', env: server.env, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  if (result.status !== 0) throw new Error(`orchestration/deploy.py failed:\n${(result.stderr || result.stdout).slice(-3000)}`);
  const id = result.stdout.trim().split('\n').pop() ?? '';
  if (!/^[0-9a-f-]{36}$/.test(id)) throw new Error(`orchestration/deploy.py printed no deployment id:\n${result.stdout}`);
  return id;
}

export interface PrefectWorker {
  readonly process: ChildProcess;
  stop(): Promise<void>;
}

/**
 * A process worker for the pool. Its environment is what the flow runs (and so the trainer steps)
 * get: MLflow's address and account go in through `env`, never into the deployment's stored
 * job variables.
 */
export function startWorker(
  server: PrefectServer,
  options: { pool?: string; env?: NodeJS.ProcessEnv; quiet?: boolean } = {},
): PrefectWorker {
  const prefect = ensurePrefectInstalled();
  const child = spawn(prefect, ['worker', 'start', '--pool', options.pool ?? WORK_POOL, '--type', 'process'], {
    cwd: ROOT,
    stdio: ['ignore', options.quiet ? 'ignore' : 'inherit', options.quiet ? 'ignore' : 'inherit'],
    // The Prefect settings last: a caller's environment cannot point the worker at another server.
    env: { ...server.env, ...options.env, ...prefectEnv(server.home, server.apiUrl, {}) },
    detached: true,
  });
  let stopped: Promise<void> | undefined;
  return { process: child, stop: () => (stopped ??= stopGroup(child)) };
}

const FlowRun = z.object({
  id: z.string(),
  name: z.string(),
  state_type: z.string().nullable(),
  state_name: z.string().nullable(),
  state: z.object({ message: z.string().nullable().optional() }).nullable().optional(),
  deployment_id: z.string().nullable().optional(),
});
export type FlowRun = z.infer<typeof FlowRun>;

const FINAL = new Set(['COMPLETED', 'FAILED', 'CRASHED', 'CANCELLED']);

/**
 * Prefect's server answers 503 for the errors it calls retryable (is_client_retryable_exception: its
 * SQLite database locked by another writer, the transaction rolled back), and Prefect's own client
 * retries them. A busy two-core machine running flow runs meets one now and then (seen on
 * create_flow_run): such a request is asked again, as Prefect's client would.
 */
const LOCKED_RETRIES = 8;

async function api<T>(server: PrefectServer, route: string, schema: z.ZodType<T>, body?: unknown): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    const response = await fetch(`${server.apiUrl}${route}`, {
      method: body === undefined ? 'GET' : 'POST',
      headers: { 'content-type': 'application/json' },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    if (response.status === 503 && attempt < LOCKED_RETRIES) {
      await response.body?.cancel();
      await new Promise((r) => setTimeout(r, 250 * attempt));
      continue;
    }
    if (!response.ok) throw new Error(`Prefect ${route}: ${response.status} ${await response.text()}`);
    return schema.parse(await response.json());
  }
}

/** A flow run of the deployment, now, with these parameters over the deployment's defaults. */
export function runDeployment(
  server: PrefectServer,
  deploymentId: string,
  parameters: Record<string, unknown> = {},
): Promise<FlowRun> {
  return api(server, `/deployments/${deploymentId}/create_flow_run`, FlowRun, { parameters });
}

export function readFlowRun(server: PrefectServer, id: string): Promise<FlowRun> {
  return api(server, `/flow_runs/${id}`, FlowRun);
}

/** Polls the flow run until it reaches a final state (Completed, Failed, Crashed, Cancelled). */
export async function waitForFlowRun(server: PrefectServer, id: string, timeoutMs: number): Promise<FlowRun> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const run = await readFlowRun(server, id);
    if (run.state_type && FINAL.has(run.state_type)) return run;
    if (Date.now() > deadline) throw new Error(`flow run ${run.name} still ${run.state_name ?? '?'} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

const TaskRun = z.object({
  id: z.string(),
  name: z.string(),
  task_key: z.string(),
  state_type: z.string().nullable(),
  state_name: z.string().nullable(),
  run_count: z.number(),
});
export type TaskRun = z.infer<typeof TaskRun>;

export function taskRunsOf(server: PrefectServer, flowRunId: string): Promise<TaskRun[]> {
  return api(server, '/task_runs/filter', z.array(TaskRun), {
    flow_runs: { id: { any_: [flowRunId] } },
    sort: 'EXPECTED_START_TIME_ASC',
  });
}

export const Deployment = z.object({
  id: z.string(),
  name: z.string(),
  work_pool_name: z.string().nullable(),
  schedules: z.array(
    z.object({
      active: z.boolean(),
      schedule: z.object({ cron: z.string().optional(), timezone: z.string().nullable().optional() }),
    }),
  ),
});
export type Deployment = z.infer<typeof Deployment>;

export function readDeployment(server: PrefectServer, id: string): Promise<Deployment> {
  return api(server, `/deployments/${id}`, Deployment);
}

/** The UI's page of a flow run. */
export function flowRunUrl(server: PrefectServer, id: string): string {
  return `${server.url}/runs/flow-run/${id}`;
}
