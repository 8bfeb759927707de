import { createHmac } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import type { Redis } from 'ioredis';
import { AlertEvent, type PredictionEvent } from '@conveyor/shared/contract/events.contract';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { loadModel, type LoadedModel } from '@conveyor/shared/model/runtime';
import { digitPng, heldOutDigits } from '../support/images.js';
import { noisy, predictionEvents, publish } from '../support/events.js';
import { predict, request } from '../support/http.js';
import { randomPrefix, testRedis } from '../support/redis.js';
import { until } from '../support/wait.js';
import {
  dumpLogsOnFailure,
  spawnMonitor,
  startGateway,
  startMonitor,
  startWorker,
  stopAll,
  type Gateway,
} from '../support/services.js';

/**
 * The drift monitor against real Redis: a consumer group shared by two monitor processes, a
 * monitor killed mid-stream, drift raised once and resolved once, a signed webhook, and rolling
 * quality from feedback posted to the gateway.
 */

async function alertsOf(redis: Redis, prefix: string): Promise<AlertEvent[]> {
  return (await redis.xrange(redisKeys(prefix).alerts, '-', '+')).map(([, f]) => AlertEvent.parse(JSON.parse(f[1]!)));
}

async function windows(
  redis: Redis,
  prefix: string,
): Promise<
  { index: number; size: number; status: string; features: Record<string, { value: number; level: string; state: string }> }[]
> {
  return (await redis.xrange(`${prefix}:monitor:windows`, '-', '+')).map(([, f]) => JSON.parse(f[1]!) as never);
}

describe('drift monitor', function () {
  this.timeout(180_000);
  let model: LoadedModel;
  let normal: PredictionEvent[];
  let shifted: PredictionEvent[];
  let redis: Redis;

  before(async () => {
    redis = testRedis();
    model = await loadModel('models/digits');
    const { dataset, split } = await heldOutDigits();
    // Normal traffic: digits the model never trained on (its validation and test splits).
    const images = [...split.test, ...split.validation].map((i) => dataset.samples[i]!.pixels);
    normal = await predictionEvents(model, images);
    shifted = await predictionEvents(
      model,
      images.slice(0, 900).map((p, i) => noisy(p, 70, i + 1)),
    );
  });
  after(async () => {
    await model.close();
    await redis.quit();
  });

  describe('two monitors sharing the stream, one of them killed', () => {
    const prefix = randomPrefix('mon-share');
    // Windows of 300: small enough for a quick test, large enough that sampling noise stays quiet.
    const env = { WINDOW_SIZE: '300', MIN_WINDOW: '150', CLAIM_IDLE_MS: '1000' };
    let a: Awaited<ReturnType<typeof spawnMonitor>>;
    let b: Awaited<ReturnType<typeof spawnMonitor>>;
    before(async () => {
      // Processes: one is frozen (SIGSTOP) and killed.
      [a, b] = await Promise.all([spawnMonitor(prefix, env, 'monitor-a'), spawnMonitor(prefix, env, 'monitor-b')]);
    });
    afterEach(function () {
      dumpLogsOnFailure(this, a, b);
    });
    after(() => stopAll(a, b));

    it('counts every event exactly once, even when a monitor dies with events in hand', async () => {
      const events = normal.slice(0, 1500);
      const stream = redisKeys(prefix).predictions;
      await publish(redis, stream, events.slice(0, 700));
      await until('both monitors busy', () =>
        Promise.resolve(
          a.records.some((r) => r.msg === 'window evaluated') || b.records.some((r) => r.msg === 'window evaluated'),
        ),
      );
      // Monitor a is frozen while its read is blocked in Redis: Redis then hands it entries it can
      // never acknowledge, and it is killed holding them. A read can end (BLOCK timeout) between the
      // check and the freeze, so this repeats, ten more events at a time, until a holds some.
      const consumerA = String(a.records.find((r) => typeof r.consumer === 'string')?.consumer);
      const heldByA = async () => {
        const [, , , consumers] = (await redis.xpending(stream, 'monitor')) as [number, unknown, unknown, [string, string][]];
        return Number(consumers.find(([name]) => name === consumerA)?.[1] ?? 0);
      };
      const blockedReadOfA = async () =>
        String(await redis.client('LIST'))
          .split('\n')
          .map((line) => Object.fromEntries(line.split(' ').map((kv) => kv.split('=') as [string, string])))
          .some(
            (c) => c.name === `conveyor:monitor-predictions:${consumerA}` && c.cmd === 'xreadgroup' && c.flags?.includes('b'),
          );
      let published = 700;
      const held = await until('monitor a frozen with entries in hand', async () => {
        if (!(await blockedReadOfA())) return undefined;
        a.child.kill('SIGSTOP');
        await publish(redis, stream, events.slice(published, published + 10));
        published += 10;
        const count = await heldByA();
        if (count > 0) return count;
        a.child.kill('SIGCONT');
        return published < 1400 ? undefined : Promise.reject(new Error('monitor a never received entries'));
      });
      a.child.kill('SIGKILL');
      await a.exited;
      await publish(redis, stream, events.slice(published));
      await until('five windows, nothing pending', async () => {
        const pending = (await redis.xpending(stream, 'monitor')) as [number, ...unknown[]];
        return pending[0] === 0 && (await windows(redis, prefix)).length >= 5;
      });
      const all = await windows(redis, prefix);
      expect(all.map((w) => w.index)).to.deep.equal([1, 2, 3, 4, 5]);
      expect(all.every((w) => w.size === 300)).to.equal(true);
      // 5 × 300 = 1500: nothing counted twice, nothing left over.
      const open = await redis.llen(`${prefix}:monitor:window:${model.manifest.name}@${model.manifest.version}`);
      expect(open, 'events in the open window').to.equal(0);
      // The entries monitor a died with were taken over by b, not just waited out. b counts them
      // before it acknowledges them, so its counter is complete once nothing is pending (its log
      // lines, read through a pipe, may still be on their way).
      const metrics = await fetch(`${b.url}/metrics`).then((r) => r.text());
      const reclaimed = /conveyor_monitor_stream_entries_total\{stream="predictions",kind="reclaimed"\} (\d+)/.exec(metrics);
      expect(Number(reclaimed?.[1]), 'entries reclaimed by monitor b').to.be.at.least(held);
      // The same-distribution traffic raised nothing.
      expect(await alertsOf(redis, prefix)).to.deep.equal([]);
    });

    it('reports each feature against the model version that produced the events', async () => {
      const drift = (
        await request<{
          models: {
            model: { name: string; version: string };
            states: Record<string, string>;
            lastWindow: { features: Record<string, unknown> };
          }[];
        }>(`${b.url}/drift`)
      ).body;
      expect(drift.models).to.have.length(1);
      expect(drift.models[0]!.model).to.deep.equal({ name: model.manifest.name, version: model.manifest.version });
      expect(Object.keys(drift.models[0]!.lastWindow.features).sort()).to.deep.equal([
        'brightness',
        'confidence',
        'contrast',
        'embedding',
        'inkRatio',
        'predicted-class',
      ]);
      expect(Object.values(drift.models[0]!.states).every((s) => s === 'ok')).to.equal(true);
    });
  });

  describe('drift raised and resolved, with a signed webhook', () => {
    const prefix = randomPrefix('mon-drift');
    const secret = 'shared-secret';
    const monitorToken = 'monitor-token-for-reports';
    let monitor: Awaited<ReturnType<typeof startMonitor>>;
    let hook: Server;
    const received: { body: string; signature: string }[] = [];
    let reportDir: string;

    before(async () => {
      let failFirst = true;
      hook = createServer((req, res) => {
        let body = '';
        req.on('data', (c: Buffer) => (body += c.toString()));
        req.on('end', () => {
          // The first call fails, to prove the retry.
          if (failFirst) {
            failFirst = false;
            res.writeHead(503).end();
            return;
          }
          received.push({ body, signature: String(req.headers['x-conveyor-signature']) });
          res.writeHead(204).end();
        });
      });
      await new Promise<void>((resolve) => hook.listen(0, '127.0.0.1', resolve));
      const port = (hook.address() as { port: number }).port;
      reportDir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-reports-'));
      monitor = await startMonitor(prefix, {
        WINDOW_SIZE: '300',
        MIN_WINDOW: '150',
        ALERT_WEBHOOK_URL: `http://127.0.0.1:${port}/alerts`,
        ALERT_WEBHOOK_SECRET: secret,
        REPORT_DIR: reportDir,
        MONITOR_TOKEN: monitorToken,
      });
    });
    afterEach(function () {
      dumpLogsOnFailure(this, monitor);
    });
    after(async () => {
      await stopAll(monitor);
      hook.close();
      rmSync(reportDir, { recursive: true, force: true });
    });

    it('fires one alert per drifting feature when traffic shifts, and one resolution when it returns', async () => {
      const stream = redisKeys(prefix).predictions;
      // Three normal windows, three of noisy scans, four normal again.
      await publish(redis, stream, normal.slice(0, 900));
      await publish(redis, stream, shifted.slice(0, 900));
      await publish(redis, stream, normal.slice(900, 2100));
      await until('ten windows', async () => (await windows(redis, prefix)).length >= 10 || undefined);
      const alerts = await alertsOf(redis, prefix);
      const byFeature = new Map<string, string[]>();
      for (const a of alerts) byFeature.set(a.feature, [...(byFeature.get(a.feature) ?? []), a.severity]);
      expect(byFeature.get('brightness')).to.deep.equal(['alert', 'resolved']);
      for (const [feature, sequence] of byFeature) {
        expect(sequence.at(-1), feature).to.equal('resolved');
        expect(sequence.filter((s) => s === 'alert').length, feature).to.be.at.most(1);
      }
      const first = alerts.find((a) => a.feature === 'brightness' && a.severity === 'alert')!;
      expect(first).to.include({ metric: 'psi', threshold: 0.25 });
      expect(first.model.version).to.equal(model.manifest.version);
      expect(first.value).to.be.greaterThan(0.25);
      const line = monitor.records.find((r) => r.event === 'alert' && r.feature === 'brightness' && r.severity === 'alert');
      expect(line).to.include({ level: 'error', metric: 'psi', modelVersion: model.manifest.version });
      expect(line?.window).to.have.keys('index', 'size', 'from', 'to');
    });

    it('delivers every alert to the webhook, signed, after retrying a failure', async () => {
      const alerts = await alertsOf(redis, prefix);
      await until('webhook deliveries', () => Promise.resolve(received.length >= alerts.length || undefined));
      for (const { body, signature } of received) {
        const [t, v1] = signature.split(',').map((p) => p.split('=')[1]!);
        expect(createHmac('sha256', secret).update(`${t}.${body}`).digest('hex')).to.equal(v1);
      }
      expect(received.map((r) => (JSON.parse(r.body) as AlertEvent).id).sort()).to.deep.equal(alerts.map((a) => a.id).sort());
    });

    it('writes a CSV of metrics per window and a PNG chart on demand, and exposes Prometheus gauges', async () => {
      const written = await request<{ csv: string; png: string }>(`${monitor.url}/reports`, {
        method: 'POST',
        headers: { authorization: `Bearer ${monitorToken}` },
      });
      expect(written.status).to.equal(201);
      // The answer names the reports by URL; the files are in REPORT_DIR.
      const csv = readFileSync(path.join(reportDir, 'drift.csv'), 'utf8').trim().split('\n');
      expect(csv[0]).to.equal('evaluated_at,model,version,window,size,from,to,feature,metric,value,js,level,state,warn,alert');
      expect(csv.length - 1).to.equal((await windows(redis, prefix)).length * 6);
      expect(await fetch(new URL(written.body.csv, monitor.url)).then((r) => r.text())).to.equal(`${csv.join('\n')}\n`);
      const png = Buffer.from(await (await fetch(new URL(written.body.png, monitor.url))).arrayBuffer());
      expect(png.subarray(1, 4).toString()).to.equal('PNG');
      expect(png.equals(readFileSync(path.join(reportDir, 'drift.png')))).to.equal(true);
      const metrics = await fetch(`${monitor.url}/metrics`).then((r) => r.text());
      expect(metrics).to.match(/conveyor_drift_value\{model="digits",version="[^"]+",feature="brightness",metric="psi"\} \d/);
      expect(metrics).to.match(/conveyor_drift_state\{model="digits",version="[^"]+",feature="brightness"\} 0/);
    });
  });

  describe('quality from feedback', () => {
    const prefix = randomPrefix('mon-quality');
    let gateway: Gateway;
    let worker: Awaited<ReturnType<typeof startWorker>>;
    let monitor: Awaited<ReturnType<typeof startMonitor>>;
    before(async () => {
      [gateway, worker, monitor] = await Promise.all([
        startGateway(prefix),
        startWorker(prefix),
        startMonitor(prefix, { QUALITY_WINDOW: '100', QUALITY_MIN_LABELS: '50', QUALITY_TARGET: '0.9', ALERT_CONSECUTIVE: '1' }),
      ]);
    });
    afterEach(function () {
      dumpLogsOnFailure(this, gateway, worker, monitor);
    });
    after(() => stopAll(gateway, worker, monitor));

    const feedback = (jobId: string, label: string) =>
      request(`${gateway.url}/v1/feedback`, {
        method: 'POST',
        body: JSON.stringify({ jobId, label }),
        headers: { 'content-type': 'application/json' },
      });

    it('accepts ground truth once per finished job and refuses unknown ids with 404', async () => {
      const reply = await predict(gateway.url, await digitPng((await heldOutDigits()).dataset.samples[0]!.pixels));
      const id = reply.body.id as string;
      expect((await feedback(id, '5')).status).to.equal(202);
      const again = await feedback(id, '5');
      expect(again.status).to.equal(409);
      expect(again.headers.get('content-type')).to.match(/problem\+json/);
      expect((await feedback('00000000-0000-4000-8000-000000000000', '1')).status).to.equal(404);
      expect((await feedback('not-a-uuid', '1')).status).to.equal(400);
    });

    it('keeps rolling accuracy with coverage and an interval, and alerts when it falls below target', async () => {
      const { dataset, split } = await heldOutDigits();
      const truth = split.test.slice(0, 140).map((i) => dataset.samples[i]!);
      const jobs: { id: string; label: string; predicted: string }[] = [];
      for (const sample of truth) {
        const reply = await predict(gateway.url, await digitPng(sample.pixels));
        jobs.push({
          id: reply.body.id as string,
          label: String(sample.label),
          predicted: (reply.body.prediction as { label: string }).label,
        });
      }
      for (const job of jobs.slice(0, 70)) expect((await feedback(job.id, job.label)).status).to.equal(202);
      const good = await until('quality', async () => {
        const q = (
          await request<{ models: { quality: { labelled?: number; accuracy?: number; coverage?: number; lower?: number } }[] }>(
            `${monitor.url}/drift`,
          )
        ).body.models[0]?.quality;
        return q?.labelled && q.labelled >= 70 ? q : undefined;
      });
      expect(good.accuracy).to.be.greaterThan(0.9);
      expect(good.coverage).to.be.greaterThan(0.9);
      expect(good.lower).to.be.lessThan(good.accuracy!);
      // Then the world changes: every later label disagrees with the model.
      for (const job of jobs.slice(70)) expect((await feedback(job.id, job.predicted === '0' ? '1' : '0')).status).to.equal(202);
      const alert = await until('quality alert', async () =>
        (await alertsOf(redis, prefix)).find((a) => a.feature === 'quality' && a.severity !== 'resolved'),
      );
      expect(alert.metric).to.equal('accuracy');
      expect(alert.value).to.be.lessThan(0.9);
    });
  });
});
