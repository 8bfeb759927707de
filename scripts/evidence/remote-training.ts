import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { format } from 'prettier';
import { z } from 'zod';
import { MlflowClient, type Run } from '@conveyor/shared/mlflow/client';
import { ROOT } from '../../harness/service-process.js';

/**
 * The remote training run, for the record (docs/evidence/remote-training-run.{json,md} and
 * docs/images/remote-training-run.png), against a compose system that is already up:
 *
 *   docker-compose -f docker-compose.yml -f docker-compose.orchestration.yml up -d \
 *     --scale inference-worker=2 --scale inference-worker-moderation=2
 *   node --conditions=conveyor-source --import tsx scripts/evidence/remote-training.ts
 *
 * It checks what the `trainer` container can reach (Prefect and MLflow, nothing of the serving
 * side), triggers the `weekly` deployment now, waits for its final state, and collects: the task
 * runs, each trainer step's wall time, CPU time and peak memory (the flow's `resource-usage`
 * artifact: trainer_steps.py measures them with wait4), the S3 requests the run caused (the `s3`
 * service's counter, before and after), every object version the run left in the bucket, the
 * MLflow runs with their host tags, and a screenshot of the best run's page. Then the serving side:
 * GET /v1/models and one prediction per model. Compose runs are not part of CI (no container
 * engine there): this record is the evidence. scripts/cost/cost-table.ts reads it.
 */
const env = z
  .object({
    COMPOSE: z.string().default('docker-compose'),
    COMPOSE_FILES: z.string().default('docker-compose.yml,docker-compose.orchestration.yml'),
    CONTAINER_CLI: z.string().default('podman'),
    PREFECT_URL: z.url().default('http://127.0.0.1:4200'),
    MLFLOW_URL: z.url().default('http://127.0.0.1:5000'),
    GATEWAY_URL: z.url().default('http://127.0.0.1:8080'),
    MLFLOW_ADMIN_PASSWORD: z.string().default('conveyor-local-only-admin'),
    MLFLOW_EXPERIMENT: z.string().default('conveyor-digits'),
    S3_BUCKET: z.string().default('conveyor-mlflow'),
    /** The cat photo of the scikit-image wheel (scripts/models/moderation.ts installs it into .venv/models). */
    CAT_PHOTO: z.string().default(path.join(ROOT, '.venv/models/lib/python3.11/site-packages/skimage/data/chelsea.png')),
    FLOW_TIMEOUT_MINUTES: z.coerce.number().positive().default(90),
    FLOW_RUN_ID: z.string().optional(),
  })
  .parse(process.env);

const OUT_JSON = path.join(ROOT, 'docs/evidence/remote-training-run.json');
const OUT_MD = path.join(ROOT, 'docs/evidence/remote-training-run.md');
const SCREENSHOT = path.join(ROOT, 'docs/images/remote-training-run.png');

function run(command: string, args: string[], input?: string): string {
  const result = spawnSync(command, args, { cwd: ROOT, encoding: 'utf8', input, maxBuffer: 64 * 2 ** 20 });
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} failed (${result.status}):\n${result.stderr}`);
  return result.stdout;
}
// COMPOSE may be two words (`docker compose`, Compose v2) or one (`docker-compose`, 1.29).
const [composeCommand = 'docker-compose', ...composeArgs] = env.COMPOSE.split(' ').filter(Boolean);
const compose = (...args: string[]) =>
  run(composeCommand, [...composeArgs, ...env.COMPOSE_FILES.split(',').flatMap((f) => ['-f', f]), ...args]);
/** Runs a Python program inside a service's container (stdin), returns its stdout parsed as JSON. */
const pythonIn = (service: string, python: string, program: string): unknown =>
  JSON.parse(compose('exec', '-T', service, python, '-c', program));

// ── the trainer container: who it is, what it reaches ───────────────────────────────────────
const [trainerId] = compose('ps', '-q', 'trainer').trim().split('\n');
if (!trainerId) throw new Error('no trainer container: is the compose system up?');
const inspected = z
  .array(
    z.object({
      Id: z.string(),
      ImageName: z.string().optional(),
      Image: z.string(),
      Config: z.object({ Hostname: z.string() }),
      NetworkSettings: z.object({ Networks: z.record(z.string(), z.unknown()) }),
    }),
  )
  .parse(JSON.parse(run(env.CONTAINER_CLI, ['inspect', trainerId])))[0]!;
const trainer = {
  container: inspected.Id.slice(0, 12),
  hostname: inspected.Config.Hostname,
  image: inspected.ImageName ?? '',
  imageId: inspected.Image,
  networks: Object.keys(inspected.NetworkSettings.Networks).sort(),
};
const PROBES: Record<string, number> = {
  'prefect-server': 4200,
  mlflow: 5000,
  s3: 9000,
  redis: 6379,
  gateway: 8080,
  'inference-worker': 9101,
  'inference-worker-moderation': 9101,
  monitor: 9100,
};
const reach = pythonIn(
  'trainer',
  'python3',
  `import json, socket
out = {}
for host, port in ${JSON.stringify(Object.entries(PROBES))}:
    try:
        addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4]
    except OSError as e:
        out[host] = "no such host"
        continue
    try:
        socket.create_connection(addr[:2], timeout=3).close()
        out[host] = "reachable"
    except OSError as e:
        out[host] = "unreachable: " + type(e).__name__
print(json.dumps(out))`,
) as Record<string, string>;
console.error('[evidence] trainer reaches', reach);

// ── the S3 request counter and the bucket's object versions (inside the s3 container) ────────
const S3Counts = z.object({
  total: z.number(),
  by_class: z.record(z.string(), z.number()),
  by_operation: z.record(z.string(), z.number()),
});
type S3Counts = z.infer<typeof S3Counts>;
const s3Counts = (): S3Counts =>
  S3Counts.parse(
    pythonIn(
      's3',
      '/opt/s3/bin/python',
      `import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9000/_conveyor/requests', timeout=5).read().decode())`,
    ),
  );
const ObjectVersion = z.object({ key: z.string(), versionId: z.string(), size: z.number(), latest: z.boolean() });
const objectVersions = () =>
  z.object({ versions: z.array(ObjectVersion), deleteMarkers: z.number(), lifecycle: z.unknown() }).parse(
    pythonIn(
      's3',
      '/opt/s3/bin/python',
      `import json, boto3
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:9000", region_name="us-east-1", aws_access_key_id="evidence", aws_secret_access_key="evidence")
versions, markers = [], 0
for page in s3.get_paginator("list_object_versions").paginate(Bucket=${JSON.stringify(env.S3_BUCKET)}):
    versions += [{"key": v["Key"], "versionId": v["VersionId"], "size": v["Size"], "latest": v["IsLatest"]} for v in page.get("Versions", [])]
    markers += len(page.get("DeleteMarkers", []))
rules = s3.get_bucket_lifecycle_configuration(Bucket=${JSON.stringify(env.S3_BUCKET)})["Rules"]
print(json.dumps({"versions": versions, "deleteMarkers": markers, "lifecycle": rules}))`,
    ),
  );

// ── the flow run ─────────────────────────────────────────────────────────────────────────────
// A fresh connection per call (agent: false): through podman's port forwarding, a kept-alive
// connection the server had closed in the meantime failed the next POST ("other side closed").
function prefectApi(route: string, body?: unknown): Promise<unknown> {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const request = http.request(
      `${env.PREFECT_URL}/api${route}`,
      {
        method: payload === undefined ? 'GET' : 'POST',
        agent: false,
        headers: { 'content-type': 'application/json', ...(payload ? { 'content-length': Buffer.byteLength(payload) } : {}) },
        timeout: 30_000,
      },
      (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (c: Buffer) => chunks.push(c));
        response.on('end', () => {
          const text = Buffer.concat(chunks).toString();
          if ((response.statusCode ?? 500) >= 300) reject(new Error(`Prefect ${route}: ${response.statusCode} ${text}`));
          else resolve(JSON.parse(text));
        });
      },
    );
    request.on('timeout', () => request.destroy(new Error(`Prefect ${route}: timed out`)));
    request.on('error', reject);
    request.end(payload);
  });
}
const FINAL = new Set(['COMPLETED', 'FAILED', 'CRASHED', 'CANCELLED']);
const FlowRunState = z.object({ id: z.string(), name: z.string(), state_type: z.string().nullable() });
async function waitForFlowRun(id: string, timeoutMs: number): Promise<z.infer<typeof FlowRunState>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    // A poll that fails (the machine is busy) is tried again until the deadline.
    const run = await prefectApi(`/flow_runs/${id}`).then(
      (r) => FlowRunState.parse(r),
      () => undefined,
    );
    if (run?.state_type && FINAL.has(run.state_type)) return run;
    if (Date.now() > deadline) throw new Error(`flow run ${id} not finished after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 5000));
  }
}
const deployment = z
  .object({ id: z.string(), name: z.string(), work_pool_name: z.string().nullable(), schedules: z.array(z.unknown()) })
  .parse(await prefectApi('/deployments/name/conveyor-training/weekly'));

// FLOW_RUN_ID: collect the record of a run triggered before (the counts taken before it were saved).
const stateFile = (id: string) => path.join(ROOT, 'data', `remote-training-${id}.json`);
const Before = z.object({ counts: S3Counts, versions: z.array(z.string()), after: S3Counts.optional() });
let before: S3Counts;
let versionsBefore: Set<string>;
let submittedId: string;
if (env.FLOW_RUN_ID) {
  submittedId = env.FLOW_RUN_ID;
  const saved = Before.parse(JSON.parse(readFileSync(stateFile(submittedId), 'utf8')));
  before = saved.counts;
  versionsBefore = new Set(saved.versions);
} else {
  // The listing first: its own requests (LIST versions, GET lifecycle) must not count as the run's.
  versionsBefore = new Set(objectVersions().versions.map((v) => `${v.key}@${v.versionId}`));
  before = s3Counts();
  const submitted = FlowRunState.parse(await prefectApi(`/deployments/${deployment.id}/create_flow_run`, { parameters: {} }));
  submittedId = submitted.id;
  mkdirSync(path.dirname(stateFile(submittedId)), { recursive: true });
  writeFileSync(stateFile(submittedId), JSON.stringify({ counts: before, versions: [...versionsBefore] }));
  console.error(`[evidence] flow run ${submitted.name} (${submitted.id}) submitted; waiting for its final state`);
}
const finished = await waitForFlowRun(submittedId, env.FLOW_TIMEOUT_MINUTES * 60_000);
// Taken once, as soon as the run is over (before anything here browses MLflow, whose UI lists the
// bucket), and kept for a later collection of the same run.
const saved = Before.parse(JSON.parse(readFileSync(stateFile(finished.id), 'utf8')));
const after = saved.after ?? s3Counts();
writeFileSync(stateFile(finished.id), JSON.stringify({ ...saved, after }));
const flowRun = z
  .object({
    id: z.string(),
    name: z.string(),
    state_name: z.string().nullable(),
    start_time: z.string().nullable(),
    end_time: z.string().nullable(),
    total_run_time: z.number(),
    infrastructure_pid: z.string().nullable().optional(),
    work_pool_name: z.string().nullable().optional(),
  })
  .parse(await prefectApi(`/flow_runs/${finished.id}`));
// Task runs report their final states as events, which may land a moment after the flow run's.
const TaskRuns = z.array(
  z.object({ name: z.string(), state_type: z.string().nullable(), state_name: z.string().nullable(), run_count: z.number() }),
);
let taskRuns = TaskRuns.parse([]);
for (let i = 0; i < 30; i++) {
  taskRuns = TaskRuns.parse(
    await prefectApi('/task_runs/filter', { flow_runs: { id: { any_: [finished.id] } }, sort: 'EXPECTED_START_TIME_ASC' }),
  );
  if (taskRuns.every((t) => t.state_type && FINAL.has(t.state_type))) break;
  await new Promise((r) => setTimeout(r, 2000));
}
const tasks = taskRuns.map((t) => ({ name: t.name, state: t.state_name, runCount: t.run_count }));
const usageArtifact = z.array(z.object({ data: z.unknown() })).parse(
  await prefectApi('/artifacts/filter', {
    artifacts: { flow_run_id: { any_: [finished.id] }, key: { any_: ['resource-usage'] } },
  }),
)[0];
const Usage = z.array(
  z.object({
    step: z.string(),
    exit_code: z.number(),
    wall_s: z.number(),
    user_s: z.number(),
    sys_s: z.number(),
    cpu_s: z.number(),
    max_rss_mb: z.number(),
  }),
);
const usage = usageArtifact
  ? Usage.parse(typeof usageArtifact.data === 'string' ? JSON.parse(usageArtifact.data) : usageArtifact.data)
  : [];
console.error(`[evidence] flow run ${flowRun.name}: ${flowRun.state_name}`);

// ── MLflow: the runs it tracked, where they ran, the version it registered ───────────────────
const credentials = { username: 'admin', password: env.MLFLOW_ADMIN_PASSWORD };
const mlflow = new MlflowClient(env.MLFLOW_URL, { credentials });
const experiment = await mlflow.getExperimentByName(env.MLFLOW_EXPERIMENT);
if (!experiment) throw new Error(`no MLflow experiment ${env.MLFLOW_EXPERIMENT}`);
const runs: Run[] = await mlflow.searchRuns([experiment.experimentId], {
  filter: `tags."prefect.flow_run_id" = '${finished.id}'`,
});
const tagsOf = (r: Run) => Object.fromEntries(r.data.tags.map((t) => [t.key, t.value]));
const staging = await mlflow.getVersionByAlias('digits', 'staging');
const all = objectVersions();
const bytesUnder = (prefix: string) => all.versions.filter((v) => v.key.includes(prefix));
const trackedRuns = runs.map((r) => {
  const tags = tagsOf(r);
  const objects = bytesUnder(`/${r.info.run_id}/`);
  return {
    runId: r.info.run_id,
    runName: r.info.run_name,
    status: r.info.status,
    host: {
      hostname: tags['conveyor.host'],
      image: tags['conveyor.host.image'],
      platform: tags['conveyor.host.platform'],
      cpus: tags['conveyor.host.cpus'],
      memoryMb: tags['conveyor.host.memory_mb'],
    },
    testAccuracy: r.data.metrics.find((m) => m.key === 'test_accuracy')?.value,
    s3: {
      objectVersions: objects.length,
      noncurrentVersions: objects.filter((o) => !o.latest).length,
      bytesAllVersions: objects.reduce((sum, o) => sum + o.size, 0),
      objects: objects.map((o) => ({ key: o.key, versionId: o.versionId, size: o.size, latest: o.latest })),
    },
  };
});
const best = trackedRuns.find((r) => r.runId === staging?.run_id);
const added = all.versions.filter((v) => !versionsBefore.has(`${v.key}@${v.versionId}`));

// ── the MLflow page of the registered run ────────────────────────────────────────────────────
if (best) {
  mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-sync', '--no-first-run'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1500, height: 1100 }, httpCredentials: credentials });
    await page.goto(`${env.MLFLOW_URL}/#/experiments/${experiment.experimentId}/runs/${best.runId}`, {
      waitUntil: 'domcontentloaded',
    });
    // The run's overview lists its tags: wait for the container's hostname to be drawn.
    await page.getByText(trainer.hostname).first().waitFor({ timeout: 60_000 });
    const close = page.locator('button[aria-label="Close"]').first();
    if (await close.isVisible().catch(() => false)) await close.click();
    // MLflow's UI keeps polling (never network-idle): give the rest of the page a moment to draw.
    await page.waitForTimeout(2000);
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
  } finally {
    await browser.close();
  }
}

// ── the serving side: both models at once ────────────────────────────────────────────────────
async function predict(route: string, file: string, type: string): Promise<unknown> {
  const form = new FormData();
  form.append('file', new Blob([readFileSync(file)], { type }), path.basename(file));
  const response = await fetch(`${env.GATEWAY_URL}${route}`, { method: 'POST', body: form });
  const body = (await response.json()) as { status?: string; model?: unknown; prediction?: { label?: string; top?: unknown } };
  return { status: response.status, model: body.model, label: body.prediction?.label, top: body.prediction?.top };
}
const models = await (await fetch(`${env.GATEWAY_URL}/v1/models`)).json();
const serving = {
  replicas: Object.fromEntries(
    ['inference-worker', 'inference-worker-moderation'].map((s) => [
      s,
      compose('ps', '-q', s).trim().split('\n').filter(Boolean).length,
    ]),
  ),
  models,
  digits: await predict('/v1/models/digits/predict', path.join(ROOT, 'docs/examples/seven.png'), 'image/png'),
  moderation: await predict('/v1/models/moderation/predict', env.CAT_PHOTO, 'image/png'),
};

// ── the record ───────────────────────────────────────────────────────────────────────────────
const delta = (key: 'by_class' | 'by_operation') =>
  Object.fromEntries(
    Object.entries(after[key])
      .map(([k, n]) => [k, n - (before[key][k] ?? 0)] as const)
      .filter(([, n]) => n > 0),
  );
const record = {
  recordedAt: new Date().toISOString(),
  how: 'scripts/evidence/remote-training.ts against docker-compose -f docker-compose.yml -f docker-compose.orchestration.yml up (podman 4.3 + docker-compose 1.29 through the sandbox of ../shared/tools/container-sandbox.sh)',
  trainer: { ...trainer, reaches: reach },
  deployment: { id: deployment.id, name: `conveyor-training/${deployment.name}`, workPool: deployment.work_pool_name },
  flowRun: {
    id: flowRun.id,
    name: flowRun.name,
    state: flowRun.state_name,
    startTime: flowRun.start_time,
    endTime: flowRun.end_time,
    wallSeconds: flowRun.total_run_time,
    tasks,
  },
  usage,
  s3Requests: { total: after.total - before.total, byClass: delta('by_class'), byOperation: delta('by_operation') },
  bucket: {
    name: env.S3_BUCKET,
    objectVersionsBefore: versionsBefore.size,
    objectVersionsAfter: all.versions.length,
    // What this flow run added to the bucket, every object version of it.
    addedVersions: added.length,
    addedNoncurrentVersions: added.filter((v) => !v.latest).length,
    addedBytes: added.reduce((sum, v) => sum + v.size, 0),
    deleteMarkers: all.deleteMarkers,
    lifecycle: all.lifecycle,
  },
  mlflow: {
    experimentId: experiment.experimentId,
    runs: trackedRuns,
    registered: staging ? { name: staging.name, version: staging.version, runId: staging.run_id, alias: 'staging' } : null,
    screenshot: best ? path.relative(ROOT, SCREENSHOT) : null,
  },
  serving,
};
mkdirSync(path.dirname(OUT_JSON), { recursive: true });
// Formatted as `npm run lint` wants it (prettier --check .).
writeFileSync(OUT_JSON, await format(JSON.stringify(record), { parser: 'json' }));
writeFileSync(OUT_MD, markdown(record));
console.error(`[evidence] ${path.relative(ROOT, OUT_JSON)}, ${path.relative(ROOT, OUT_MD)} written`);
if (flowRun.state_name !== 'Completed') process.exitCode = 1;

function markdown(r: typeof record): string {
  const lines = [
    '# A remote training run through compose',
    '',
    `Recorded ${r.recordedAt} by \`scripts/evidence/remote-training.ts\` (the full record: [remote-training-run.json](remote-training-run.json)).`,
    '',
    `- **Where it ran**: container \`${r.trainer.container}\` (hostname \`${r.trainer.hostname}\`), image \`${r.trainer.image}\` (\`${r.trainer.imageId.slice(0, 19)}\`), networks ${r.trainer.networks.map((n) => `\`${n}\``).join(', ')}.`,
    `- **What it reaches** (TCP from inside the trainer): ${Object.entries(r.trainer.reaches)
      .map(([h, s]) => `${h}: ${s}`)
      .join('; ')}.`,
    `- **Flow run** \`${r.flowRun.name}\` (\`${r.flowRun.id}\`) of \`${r.deployment.name}\` on pool \`${r.deployment.workPool}\`: **${r.flowRun.state}**, ${r.flowRun.wallSeconds.toFixed(1)} s (${r.flowRun.startTime} → ${r.flowRun.endTime}).`,
    '',
    '| Task run | State | Attempts |',
    '| --- | --- | --- |',
    ...r.flowRun.tasks.map((t) => `| ${t.name} | ${t.state} | ${t.runCount} |`),
    '',
    '| Trainer step | Wall s | CPU s (user + sys) | Peak RSS MB |',
    '| --- | --- | --- | --- |',
    ...r.usage.map((u) => `| ${u.step} | ${u.wall_s} | ${u.cpu_s} | ${u.max_rss_mb} |`),
    '',
    '| MLflow run | Name | conveyor.host | conveyor.host.image | Test accuracy | S3 object versions | Bytes (all versions) |',
    '| --- | --- | --- | --- | --- | --- | --- |',
    ...r.mlflow.runs.map(
      (m) =>
        `| \`${m.runId}\` | ${m.runName} | \`${m.host.hostname}\` | \`${m.host.image}\` | ${m.testAccuracy ?? '—'} | ${m.s3.objectVersions} (${m.s3.noncurrentVersions} noncurrent) | ${m.s3.bytesAllVersions} |`,
    ),
    '',
    `- **Registered**: ${r.mlflow.registered ? `\`${r.mlflow.registered.name}\` version ${r.mlflow.registered.version} (alias staging), from run \`${r.mlflow.registered.runId}\`` : 'nothing'}. Its page: [../images/remote-training-run.png](../images/remote-training-run.png).`,
    `- **S3 requests of the run**: ${r.s3Requests.total} (${Object.entries(r.s3Requests.byClass)
      .map(([k, n]) => `${k}: ${n}`)
      .join(', ')}); by operation: ${Object.entries(r.s3Requests.byOperation)
      .map(([k, n]) => `\`${k}\` ${n}`)
      .join(', ')}.`,
    `- **Bucket** \`${r.bucket.name}\`: ${r.bucket.objectVersionsBefore} → ${r.bucket.objectVersionsAfter} object versions (this run added ${r.bucket.addedVersions}, ${r.bucket.addedNoncurrentVersions} of them noncurrent, ${r.bucket.addedBytes} bytes), ${r.bucket.deleteMarkers} delete markers; lifecycle rule \`${JSON.stringify(r.bucket.lifecycle)}\`.`,
    '',
    '## Both models served at once',
    '',
    `Replicas: ${Object.entries(r.serving.replicas)
      .map(([s, n]) => `\`${s}\` × ${n}`)
      .join(', ')}.`,
    '',
    '```json',
    JSON.stringify({ 'GET /v1/models': r.serving.models }, null, 2),
    '```',
    '',
    `- \`POST /v1/models/digits/predict\` (docs/examples/seven.png): ${JSON.stringify(r.serving.digits)}`,
    `- \`POST /v1/models/moderation/predict\` (scikit-image's chelsea.png, a cat): ${JSON.stringify(r.serving.moderation)}`,
    '',
  ];
  return `${lines.join('\n')}\n`;
}
