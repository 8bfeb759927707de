import { ROOT_CONTEXT, trace } from '@opentelemetry/api';
import { expect } from 'chai';
import { z } from 'zod';
import { ConfigError, loadConfig, tracingConfigShape } from '../src/config.js';
import { carrierOf, contextFrom, logIds, NO_SPAN, startTracing } from '../src/tracing.js';

const TracingConfig = z.object(tracingConfigShape);

describe('tracing settings and propagation', () => {
  it('is off without an endpoint, or when disabled, and on with either endpoint setting', async () => {
    expect(startTracing(loadConfig(TracingConfig, {}), 'gateway', 'g1').enabled).to.equal(false);
    const disabled = { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318', OTEL_SDK_DISABLED: 'true' };
    expect(startTracing(loadConfig(TracingConfig, disabled), 'gateway', 'g1').enabled).to.equal(false);
    for (const env of [
      { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318' },
      { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://127.0.0.1:4318/v1/traces', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' },
    ]) {
      const tracing = startTracing(loadConfig(TracingConfig, env), 'gateway', 'g1');
      expect(tracing.enabled).to.equal(true);
      await tracing.shutdown();
    }
  });

  it('refuses at start-up what it cannot do, naming the setting (gRPC, a ratio outside 0–1, an unknown sampler)', () => {
    for (const [key, value] of [
      ['OTEL_EXPORTER_OTLP_PROTOCOL', 'grpc'],
      ['OTEL_TRACES_SAMPLER_ARG', '1.5'],
      ['OTEL_TRACES_SAMPLER', 'jaeger_remote'],
      ['OTEL_EXPORTER_OTLP_ENDPOINT', 'collector:4318'],
    ] as const) {
      expect(() => loadConfig(TracingConfig, { [key]: value }), key)
        .to.throw(ConfigError)
        .with.property('message')
        .that.includes(key);
    }
  });

  it("continues a caller's trace, and starts a new one for a malformed traceparent", () => {
    const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
    const span = trace.getSpan(contextFrom({ traceparent }));
    expect(span?.spanContext()).to.include({
      traceId: '4bf92f3577b34da6a3ce929d0e0e4736',
      spanId: '00f067aa0ba902b7',
      traceFlags: 1,
    });
    for (const bad of ['00-xyz', '00-00000000000000000000000000000000-00f067aa0ba902b7-01', ''])
      expect(contextFrom({ traceparent: bad }), bad).to.equal(ROOT_CONTEXT);
  });

  it('gives a span that records nothing no carrier and no log ids (what a job and a log line hold with tracing off)', () => {
    expect(carrierOf(NO_SPAN)).to.equal(undefined);
    expect(logIds(NO_SPAN)).to.deep.equal({});
  });
});
