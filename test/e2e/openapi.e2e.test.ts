import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { ROOT } from '../../harness/service-process.js';
import { pollUntilDone, request, uploadForm, type Reply } from '../support/http.js';
import { ResponseValidator } from '../support/openapi.js';
import { randomPrefix } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, startWorker, stopAll, type Gateway } from '../support/services.js';

const run = promisify(execFile);
const require = createRequire(import.meta.url);

/**
 * The OpenAPI document at /openapi.json: valid and clean by Redocly's recommended rules (the CLI
 * pinned in package.json), and true: every answer below, from a real gateway and worker, matches
 * the schema the document gives for its path, method, status and media type.
 */
describe('OpenAPI: /openapi.json and /docs', function () {
  this.timeout(90_000);
  const prefix = randomPrefix('openapi');
  let gateway: Gateway;
  let worker: Awaited<ReturnType<typeof startWorker>>;
  let validator: ResponseValidator;
  const seven = readFileSync(path.join(ROOT, 'docs/examples/seven.png'));

  before(async () => {
    [gateway, worker] = await Promise.all([startGateway(prefix), startWorker(prefix)]);
    const reply = await request(`${gateway.url}/openapi.json`);
    expect(reply.status).to.equal(200);
    validator = new ResponseValidator(reply.body as never);
  });
  afterEach(function () {
    dumpLogsOnFailure(this, gateway, worker);
  });
  after(() => stopAll(gateway, worker));

  function conforms(method: string, template: string, reply: Reply): void {
    validator.check(method, template, reply.status, reply.headers.get('content-type'), reply.body);
  }

  it('is OpenAPI 3.1 that Redocly lints without an error or a warning', async () => {
    expect(validator.document).to.include({ openapi: '3.1.0' });
    const dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-openapi-'));
    try {
      const file = path.join(dir, 'openapi.json');
      writeFileSync(file, JSON.stringify(validator.document));
      const cli = require.resolve('@redocly/cli/bin/cli.js');
      // exits non-zero on errors; warnings are counted from its summary
      const { stdout, stderr } = await run(process.execPath, [cli, 'lint', '--config', path.join(ROOT, 'redocly.yaml'), file], {
        cwd: dir,
        env: { ...process.env, REDOCLY_TELEMETRY: 'off', REDOCLY_SUPPRESS_UPDATE_NOTICE: 'true' },
      });
      expect(`${stdout}${stderr}`).to.match(/Your API description is valid/);
      // (the CLI prints a Node.js deprecation banner on Node 20: only its lint summary counts)
      expect(`${stdout}${stderr}`).not.to.match(/You have \d+ warnings?/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('lists every route the gateway serves', () => {
    const paths = Object.keys(validator.document.paths);
    for (const route of [
      '/v1/predict',
      '/predict',
      '/v1/models/{name}/predict',
      '/v1/jobs/{id}',
      '/v1/jobs/{id}/events',
      '/v1/models',
      '/v1/models/{name}',
      '/v2/models/{name}/ready',
      '/v1/feedback',
      '/health',
      '/ready',
      '/metrics',
      '/problems/{slug}',
    ]) {
      expect(paths, route).to.include(route);
    }
    const body = validator.document.paths['/v1/predict']!.post!;
    expect(Object.keys((body as unknown as { requestBody: { content: object } }).requestBody.content)).to.have.members([
      'multipart/form-data',
      'application/json',
      'image/*',
      'application/octet-stream',
    ]);
  });

  it('describes the answers a client gets: predict (sync, async, raw, URL refused), jobs, models, problems', async () => {
    await pollUntilReady();
    const sync = await request(`${gateway.url}/v1/predict`, { method: 'POST', body: uploadForm(seven, 'seven.png') });
    expect(sync.status).to.equal(200);
    conforms('post', '/v1/predict', sync);
    // The check can fail: the same answer without its prediction does not match.
    const { prediction: _dropped, ...withoutPrediction } = sync.body;
    expect(() => validator.check('post', '/v1/predict', 200, 'application/json', withoutPrediction)).to.throw(/prediction/);

    const raw = await request(`${gateway.url}/v1/models/digits/predict`, {
      method: 'POST',
      headers: { 'content-type': 'image/png', prefer: 'respond-async' },
      body: seven,
    });
    expect(raw.status).to.equal(202);
    conforms('post', '/v1/models/{name}/predict', raw);
    const id = String(raw.body.id);
    const done = await pollUntilDone(gateway.url, id);
    conforms('get', '/v1/jobs/{id}', done);

    const url = await request(`${gateway.url}/predict`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ url: 'http://127.0.0.1:9/seven.png' }),
    });
    expect(url.status).to.equal(422);
    conforms('post', '/predict', url);

    const bad = await request(`${gateway.url}/v1/predict`, { method: 'POST', body: uploadForm(Buffer.from('not an image')) });
    expect(bad.status).to.equal(415);
    conforms('post', '/v1/predict', bad);

    const unknownModel = await request(`${gateway.url}/v1/models/nope/predict`, { method: 'POST', body: uploadForm(seven) });
    expect(unknownModel.status).to.equal(404);
    conforms('post', '/v1/models/{name}/predict', unknownModel);

    const missing = await request(`${gateway.url}/v1/jobs/00000000-0000-4000-8000-000000000000`);
    expect(missing.status).to.equal(404);
    conforms('get', '/v1/jobs/{id}', missing);

    for (const [template, target] of [
      ['/v1/models', '/v1/models'],
      ['/v1/models/{name}', '/v1/models/digits'],
      ['/v2/models/{name}/ready', '/v2/models/digits/ready'],
      ['/health', '/health'],
      ['/ready', '/ready'],
      ['/problems/{slug}', '/problems/url-not-allowed'],
    ] as const) {
      const reply = await request(`${gateway.url}${target}`);
      expect(reply.status, target).to.equal(200);
      conforms('get', template, reply);
    }

    const feedback = await request(`${gateway.url}/v1/feedback`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ jobId: id, label: '7' }),
    });
    expect(feedback.status).to.equal(202);
    conforms('post', '/v1/feedback', feedback);
  });

  it('serves the reference page and its renderer from the gateway itself, under a strict CSP', async () => {
    const page = await fetch(`${gateway.url}/docs`);
    expect(page.status).to.equal(200);
    expect(page.headers.get('content-security-policy')).to.match(/default-src 'self'/);
    const html = await page.text();
    const scripts = [...html.matchAll(/<script src="([^"]+)"/g)].map((m) => m[1]!);
    expect(scripts).to.include('/docs/redoc.standalone.js');
    for (const src of scripts) {
      const script = await fetch(`${gateway.url}${src}`);
      expect(script.status, src).to.equal(200);
      expect(script.headers.get('content-type')).to.match(/javascript/);
    }
    expect(html).not.to.match(/https?:\/\//); // nothing from elsewhere
  });

  async function pollUntilReady(): Promise<void> {
    const deadline = Date.now() + 30_000;
    while ((await request(`${gateway.url}/v2/models/digits/ready`)).status !== 200) {
      if (Date.now() > deadline) throw new Error('digits never became ready');
      await new Promise((r) => setTimeout(r, 100));
    }
  }
});
