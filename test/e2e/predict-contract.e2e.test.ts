import { readFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { ROOT } from '../../harness/service-process.js';
import { request, type Reply } from '../support/http.js';
import { randomPrefix } from '../support/redis.js';
import { dumpLogsOnFailure, startGateway, stopAll, type Gateway } from '../support/services.js';

/**
 * The predict routes answer what /openapi.json says a request deserves: a form is exactly a `file`
 * part or a `url` field (oneOf), a URL is counted in characters as JSON Schema counts them, and a
 * request whose fault is its shape is a 400, never a 413 (which is for an image over the limit).
 * Found by Schemathesis (test/e2e/api-fuzz.e2e.test.ts); pinned here one case each.
 */
function expectProblem(reply: Reply, status: number, slug: string): void {
  expect(reply.status, JSON.stringify(reply.body)).to.equal(status);
  expect(reply.headers.get('content-type')).to.match(/^application\/problem\+json/);
  expect(reply.body).to.include({ status, type: `/problems/${slug}` });
}

describe('predict: the request shapes the document allows, and no others', function () {
  this.timeout(90_000);
  const prefix = randomPrefix('predict-contract');
  let gateway: Gateway;
  const seven = readFileSync(path.join(ROOT, 'docs/examples/seven.png'));
  // A loopback URL: refused by the gateway's address rules (422) without any network.
  const loopback = 'http://127.0.0.1:9/';

  before(async () => {
    gateway = await startGateway(prefix);
  });
  afterEach(function () {
    dumpLogsOnFailure(this, gateway);
  });
  after(() => stopAll(gateway));

  const post = (body: FormData | string, headers: Record<string, string> = {}) =>
    request(`${gateway.url}/v1/predict`, { method: 'POST', headers: { prefer: 'respond-async', ...headers }, body });
  const json = (value: unknown) => post(JSON.stringify(value), { 'content-type': 'application/json' });

  it('refuses a form with a field besides `file` (400, naming it) and accepts the same form without it', async () => {
    const form = new FormData();
    form.append('file', new Blob([seven]), 'seven.png');
    form.append('note', 'mine');
    const refused = await post(form);
    expectProblem(refused, 400, 'invalid-request');
    expect(refused.body.detail).to.include('`note`');

    const plain = new FormData();
    plain.append('file', new Blob([seven]), 'seven.png');
    expect((await post(plain)).status).to.equal(202);
  });

  it('answers a form whose `url` is longer than the text fields may be with 400, not 413', async () => {
    const form = new FormData();
    form.append('url', `${loopback}${'a'.repeat(30_000)}`);
    expectProblem(await post(form), 400, 'invalid-request');
  });

  it('answers a JSON body too long for any allowed url with 400, not 413', async () => {
    expectProblem(await json({ url: `${loopback}${'a'.repeat(70_000)}` }), 400, 'invalid-request');
  });

  it('takes a url of 4096 characters outside the BMP as a URL (judged by its address, 422), in JSON and in a form', async () => {
    const url = `${loopback}${'😀'.repeat(4096 - loopback.length)}`;
    expect(Array.from(url)).to.have.length(4096);
    expectProblem(await json({ url }), 422, 'url-not-allowed');
    const form = new FormData();
    form.append('url', url);
    expectProblem(await post(form), 422, 'url-not-allowed');
    // One character more is over the limit, in either shape.
    expectProblem(await json({ url: `${url}a` }), 400, 'invalid-request');
  });

  it('refuses a JSON body with members besides `url` (400)', async () => {
    expectProblem(await json({ url: loopback, note: 'mine' }), 400, 'invalid-request');
  });

  it('documents exactly that: oneOf file | url, no Callback-Url without callbacks, links from the job id, SSE data as JSON', async () => {
    type Schema = {
      required?: string[];
      additionalProperties?: boolean;
      properties?: Record<string, Schema & { const?: string }>;
    };
    type Operation = {
      parameters: { name: string }[];
      callbacks?: unknown;
      requestBody: { content: Record<string, { schema: { oneOf: Schema[] } }> };
      responses: Record<string, { links?: Record<string, unknown>; content?: Record<string, { schema: { oneOf: Schema[] } }> }>;
    };
    const doc = (await request(`${gateway.url}/openapi.json`)).body as unknown as {
      paths: Record<string, Record<string, Operation>>;
    };
    const op = doc.paths['/v1/predict']!.post!;
    const form = op.requestBody.content['multipart/form-data']!.schema;
    expect(form.oneOf.map((s) => [s.required, s.additionalProperties])).to.deep.equal([
      [['file'], false],
      [['url'], false],
    ]);
    expect(op.parameters.map((p) => p.name)).not.to.include('Callback-Url');
    expect(op.callbacks).to.equal(undefined);
    const links = op.responses['202']!.links!;
    expect(Object.keys(links)).to.deep.equal(['GetJob', 'JobEvents', 'CancelJob']);
    expect(links.GetJob).to.deep.include({ operationId: 'getJob', parameters: { id: '$response.body#/id' } });
    const events = doc.paths['/v1/jobs/{id}/events']!.get!.responses['200']!.content!['text/event-stream']!.schema;
    const result = events.oneOf.find((e) => e.properties?.event?.const === 'result');
    expect(result?.properties?.data).to.deep.include({ type: 'string', contentMediaType: 'application/json' });
  });
});
