import {
  INVALID_SPAN_CONTEXT,
  ProxyTracerProvider,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  defaultTextMapGetter,
  defaultTextMapSetter,
  isSpanContextValid,
  trace,
  type Attributes,
  type Context,
  type Span,
  type Tracer,
} from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter as OtlpJsonExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { OTLPTraceExporter as OtlpProtoExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BatchSpanProcessor,
  ParentBasedSampler,
  TraceIdRatioBasedSampler,
  TracerProvider,
  type Sampler,
} from '@opentelemetry/sdk-trace';
import type { TracingConfig } from './config.js';
import type { TraceContext } from './contract/common.contract.js';

/**
 * OpenTelemetry traces for one process (docs/tracing.md). The services create their spans with
 * explicit parents (`childOf`), never through an active-context manager: a request's or a job's
 * span is handed down with it, so there is no process-wide state, two services can share a process
 * (the tests run a gateway and a monitor in theirs), and nothing is installed into Node's async
 * hooks. The SDK is the official one (`@opentelemetry/sdk-trace`, OTLP/HTTP exporters).
 *
 * Off (no endpoint, or OTEL_SDK_DISABLED), the tracer is the API's no-op and the services do not
 * read callers' trace headers: a span is one small object with a zero context, `carrierOf` gives
 * nothing, so jobs carry no trace field and log lines no ids.
 */
export interface Tracing {
  readonly enabled: boolean;
  readonly tracer: Tracer;
  /** Exports the spans still held, then stops (graceful shutdown). */
  shutdown(): Promise<void>;
}

export { SpanKind };
export type { Attributes, Span, Tracer };

const propagator = new W3CTraceContextPropagator();

/** A span that records nothing: what a request or a job holds when tracing is off or it is not traced. */
export const NO_SPAN: Span = trace.wrapSpanContext(INVALID_SPAN_CONTEXT);

export function startTracing(config: TracingConfig, service: string, instance: string): Tracing {
  const url = tracesUrl(config);
  if (config.OTEL_SDK_DISABLED || url === undefined) return tracingOff();
  const protocol = config.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL ?? config.OTEL_EXPORTER_OTLP_PROTOCOL;
  const exporter = protocol === 'http/json' ? new OtlpJsonExporter({ url }) : new OtlpProtoExporter({ url });
  const provider = new TracerProvider({
    resource: resourceFromAttributes({
      'service.name': config.OTEL_SERVICE_NAME ?? `conveyor-${service}`,
      'service.namespace': 'conveyor',
      'service.instance.id': instance,
    }),
    sampler: sampler(config),
    spanProcessors: [
      new BatchSpanProcessor({
        exporter,
        scheduledDelayMillis: config.OTEL_BSP_SCHEDULE_DELAY,
        maxQueueSize: config.OTEL_BSP_MAX_QUEUE_SIZE,
        maxExportBatchSize: Math.min(512, config.OTEL_BSP_MAX_QUEUE_SIZE),
      }),
    ],
  });
  return {
    enabled: true,
    tracer: provider.getTracer('conveyor'),
    shutdown: () => provider.shutdown(),
  };
}

/** No spans recorded, none exported: for tests and for processes that trace nothing. */
export function tracingOff(): Tracing {
  return { enabled: false, tracer: new ProxyTracerProvider().getTracer('conveyor'), shutdown: () => Promise.resolve() };
}

/** The traces URL as the OTLP exporter specification builds it from the two endpoint settings. */
function tracesUrl(config: TracingConfig): string | undefined {
  if (config.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) return config.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT;
  const base = config.OTEL_EXPORTER_OTLP_ENDPOINT;
  if (!base) return undefined;
  return `${base.replace(/\/+$/, '')}/v1/traces`;
}

function sampler(config: TracingConfig): Sampler {
  const ratio = () => new TraceIdRatioBasedSampler(config.OTEL_TRACES_SAMPLER_ARG);
  switch (config.OTEL_TRACES_SAMPLER) {
    case 'always_on':
      return new AlwaysOnSampler();
    case 'always_off':
      return new AlwaysOffSampler();
    case 'traceidratio':
      return ratio();
    case 'parentbased_always_on':
      return new ParentBasedSampler({ root: new AlwaysOnSampler() });
    case 'parentbased_always_off':
      return new ParentBasedSampler({ root: new AlwaysOffSampler() });
    case 'parentbased_traceidratio':
      return new ParentBasedSampler({ root: ratio() });
  }
}

/** The context whose children `span`'s children are (for `tracer.startSpan(name, options, childOf(span))`). */
export function childOf(span: Span): Context {
  return trace.setSpan(ROOT_CONTEXT, span);
}

/**
 * The context a caller's W3C headers (`traceparent`, `tracestate`) or a job's carried trace name; the
 * root context when there is none or it is malformed (a malformed header starts a new trace, as the
 * W3C recommendation says, rather than failing the request).
 */
export function contextFrom(carrier: Readonly<Record<string, string | string[] | undefined>> | undefined): Context {
  if (!carrier?.traceparent) return ROOT_CONTEXT;
  return propagator.extract(ROOT_CONTEXT, carrier, defaultTextMapGetter);
}

/** What a job or an outgoing request carries to continue `span`'s trace; undefined when it is not recorded. */
export function carrierOf(span: Span): TraceContext | undefined {
  // A span sampled out still propagates (flags 00), so the next process honours the decision.
  if (!isSpanContextValid(span.spanContext())) return undefined;
  const carrier: Record<string, string> = {};
  propagator.inject(childOf(span), carrier, defaultTextMapSetter);
  if (!carrier.traceparent) return undefined;
  return carrier.tracestate
    ? { traceparent: carrier.traceparent, tracestate: carrier.tracestate }
    : { traceparent: carrier.traceparent };
}

/** The ids a log line carries to find its trace (`trace_id`, `span_id`); nothing when the span is not recorded. */
export function logIds(span: Span): { trace_id?: string; span_id?: string } {
  if (!span.isRecording()) return {};
  const { traceId, spanId } = span.spanContext();
  return { trace_id: traceId, span_id: spanId };
}

/**
 * Monotonic times (`performance.now()`) as wall-clock epoch milliseconds, for the spans of one
 * piece of work. The SDK would turn a monotonic time into one with `performance.timeOrigin`, which
 * drifts from the wall clock the longer a process runs (milliseconds within hours), while the spans
 * it times itself are anchored to the wall clock: steps drawn outside their own parent. Anchored
 * once per piece of work here, every span of it shares one offset, exact to the microsecond
 * between themselves.
 */
export class SpanClock {
  private readonly offset = Date.now() - performance.now();

  /** `monotonic` (a `performance.now()` reading; now by default) as epoch milliseconds. */
  at(monotonic: number = performance.now()): number {
    return this.offset + monotonic;
  }
}

/** A finished step recorded after the fact, from monotonic times already measured (no span held open across awaits). */
export function recordStep(
  tracer: Tracer,
  parent: Span,
  clock: SpanClock,
  name: string,
  step: { readonly start: number; readonly end: number; readonly attributes?: Attributes },
): void {
  if (!parent.isRecording()) return;
  tracer
    .startSpan(name, { startTime: clock.at(step.start), attributes: step.attributes }, childOf(parent))
    .end(clock.at(step.end));
}

/** Marks `span` failed with `error`'s message (its stack is not exported: it can name internal paths). */
export function failSpan(span: Span, error: unknown): void {
  if (!span.isRecording()) return;
  span.setStatus({ code: SpanStatusCode.ERROR, message: error instanceof Error ? error.message : String(error) });
}
