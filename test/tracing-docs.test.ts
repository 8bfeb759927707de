import { readFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import type { JaegerSpan } from '../harness/jaeger.js';
import { ROOT } from '../harness/service-process.js';
import { renderWaterfall } from '../scripts/tracing/waterfall.js';

/**
 * The trace picture in docs/tracing.md is drawn from the trace Jaeger received
 * (scripts/tracing/trace-demo.ts writes both): the picture must be that trace's, and the trace one
 * request's spans across both services, nested as the tracing suite asserts on live traces.
 */
describe('the trace shown in the docs', () => {
  const spans = JSON.parse(readFileSync(path.join(ROOT, 'docs/evidence/trace-example.json'), 'utf8')) as JaegerSpan[];
  const svg = readFileSync(path.join(ROOT, 'docs/images/trace-waterfall.svg'), 'utf8');

  it('is drawn from the received spans (scripts/tracing/trace-demo.ts regenerates both)', () => {
    const title = /font-weight="bold">([^<]*)</.exec(svg)?.[1] ?? '';
    expect(renderWaterfall(spans, title)).to.equal(svg);
  });

  it('is one trace, from the gateway through the queue wait to the worker', () => {
    expect(new Set(spans.map((s) => s.traceID)).size).to.equal(1);
    expect(new Set(spans.map((s) => s.service))).to.deep.equal(new Set(['conveyor-gateway', 'conveyor-inference-worker']));
    const wait = spans.find((s) => s.operationName === 'queue wait')!;
    const processed = spans.find((s) => s.operationName === 'process inference')!;
    expect(wait.duration, 'the request waited in the queue longer than it took to run').to.be.greaterThan(processed.duration);
  });
});
