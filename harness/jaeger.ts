import { execFileSync, spawn } from 'node:child_process';
import path from 'node:path';
import { freePort } from './free-port.js';
import { ROOT } from './service-process.js';
import { childStopper } from './child-stop.js';

/**
 * A real OTLP receiver for the tracing tests: Jaeger v2 (scripts/jaeger.sh builds the pinned binary
 * once), receiving OTLP/HTTP on a loopback port, keeping traces in memory and answering them on its
 * query API (`/api/traces/<id>`), on ports picked here.
 */
export interface LocalJaeger {
  /** What OTEL_EXPORTER_OTLP_ENDPOINT must be (the exporters add `/v1/traces`). */
  readonly otlpEndpoint: string;
  /** The query API's base URL. */
  readonly queryUrl: string;
  /** The spans Jaeger holds for a trace (empty while it has none). */
  trace(traceId: string): Promise<JaegerSpan[]>;
  stop(): Promise<void>;
}

/** A span as Jaeger's query API gives it (its v1 JSON model). */
export interface JaegerSpan {
  readonly traceID: string;
  readonly spanID: string;
  readonly operationName: string;
  readonly references: readonly { readonly refType: string; readonly traceID: string; readonly spanID: string }[];
  /** Microseconds since the epoch. */
  readonly startTime: number;
  /** Microseconds. */
  readonly duration: number;
  readonly tags: readonly { readonly key: string; readonly type: string; readonly value: unknown }[];
  readonly processID: string;
  /** The service that sent it (filled in from the trace's processes). */
  service: string;
}

interface TraceAnswer {
  data?: { spans: JaegerSpan[]; processes: Record<string, { serviceName: string }> }[] | null;
}

/** Builds Jaeger if this machine has not yet (minutes, once) and prints nothing else. */
export function ensureJaeger(): string {
  return execFileSync('bash', [path.join(ROOT, 'scripts/jaeger.sh')], {
    cwd: ROOT,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  }).trim();
}

export async function startJaeger(): Promise<LocalJaeger> {
  const bin = ensureJaeger();
  const [otlp, query, grpc] = [await freePort(), await freePort(), await freePort()];
  const child = spawn(bin, [`--config=file:${path.join(ROOT, 'harness/jaeger/receiver.yaml')}`], {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH ?? '',
      JAEGER_OTLP_HTTP_PORT: String(otlp),
      JAEGER_QUERY_PORT: String(query),
      JAEGER_QUERY_GRPC_PORT: String(grpc),
      // Jaeger's query service traces itself to an OTLP/gRPC collector on :4317 unless told not to.
      OTEL_TRACES_EXPORTER: 'none',
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const errors: string[] = [];
  child.stderr.on('data', (d: Buffer) => errors.push(d.toString()));
  const queryUrl = `http://127.0.0.1:${query}`;
  const stop = childStopper(child);
  // Ready once both its query API and its OTLP receiver answer.
  for (;;) {
    if (child.exitCode !== null) throw new Error(`jaeger exited at start:\n${errors.join('').slice(-2000)}`);
    const up = await Promise.all([
      fetch(`${queryUrl}/api/services`).then(
        (r) => r.ok,
        () => false,
      ),
      fetch(`http://127.0.0.1:${otlp}/v1/traces`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: '{}',
      }).then(
        (r) => r.ok,
        () => false,
      ),
    ]);
    if (up.every(Boolean)) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return {
    otlpEndpoint: `http://127.0.0.1:${otlp}`,
    queryUrl,
    async trace(traceId) {
      const response = await fetch(`${queryUrl}/api/traces/${traceId}`);
      if (response.status === 404) return [];
      if (!response.ok) throw new Error(`jaeger answered ${response.status} for trace ${traceId}`);
      const answer = (await response.json()) as TraceAnswer;
      return (answer.data ?? []).flatMap((t) =>
        t.spans.map((s) => ({ ...s, service: t.processes[s.processID]?.serviceName ?? '?' })),
      );
    },
    stop,
  };
}
