import type { JaegerSpan } from '../../harness/jaeger.js';

/**
 * A trace as a waterfall (SVG): one row per span, parents before their children, bars on a shared
 * time axis, coloured by service. Deterministic for a given trace, so the picture in the docs is
 * checked against the trace it was drawn from (test/tracing-docs.test.ts).
 */
export function renderWaterfall(spans: readonly JaegerSpan[], title: string): string {
  const rows = ordered(spans);
  const start = Math.min(...spans.map((s) => s.startTime));
  const end = Math.max(...spans.map((s) => s.startTime + s.duration));
  const total = Math.max(1, end - start);
  const [labelWidth, barWidth, rowHeight, top] = [300, 620, 22, 46];
  const width = labelWidth + barWidth + 110;
  const height = top + rows.length * rowHeight + 30;
  const colours: Record<string, string> = {
    'conveyor-gateway': '#3b82f6',
    'conveyor-inference-worker': '#f59e0b',
  };
  const x = (us: number) => labelWidth + ((us - start) / total) * barWidth;
  const lines = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    `<text x="10" y="20" font-size="14" font-weight="bold">${escape(title)}</text>`,
    `<text x="10" y="36" fill="#555">trace ${spans[0]?.traceID ?? ''} · ${ms(total)} · ${spans.length} spans · blue: gateway, amber: worker</text>`,
  ];
  rows.forEach(({ span, depth }, i) => {
    const y = top + i * rowHeight;
    const colour = colours[span.service] ?? '#6b7280';
    const failed = span.tags.some((t) => t.key === 'otel.status_code' && t.value === 'ERROR');
    const barX = x(span.startTime);
    const barW = Math.max(1.5, (span.duration / total) * barWidth);
    lines.push(
      `<text x="${10 + depth * 14}" y="${y + 15}">${escape(span.operationName)}</text>`,
      `<rect x="${barX.toFixed(1)}" y="${y + 4}" width="${barW.toFixed(1)}" height="14" rx="2" fill="${colour}"${failed ? ' stroke="#dc2626" stroke-width="2"' : ''}/>`,
      `<text x="${(barX + barW + 4).toFixed(1)}" y="${y + 15}" fill="#333">${ms(span.duration)}</text>`,
    );
  });
  lines.push('</svg>');
  return `${lines.join('\n')}\n`;
}

/** Depth-first from the roots (spans whose parent is not in the trace), siblings by start time. */
function ordered(spans: readonly JaegerSpan[]): { span: JaegerSpan; depth: number }[] {
  const ids = new Set(spans.map((s) => s.spanID));
  const parent = (s: JaegerSpan) => s.references.find((r) => r.refType === 'CHILD_OF')?.spanID;
  const children = new Map<string | undefined, JaegerSpan[]>();
  for (const s of spans) {
    const p = parent(s);
    const key = p !== undefined && ids.has(p) ? p : undefined;
    children.set(key, [...(children.get(key) ?? []), s]);
  }
  const out: { span: JaegerSpan; depth: number }[] = [];
  const visit = (key: string | undefined, depth: number) => {
    for (const s of [...(children.get(key) ?? [])].sort(
      (a, b) => a.startTime - b.startTime || a.operationName.localeCompare(b.operationName),
    )) {
      out.push({ span: s, depth });
      visit(s.spanID, depth + 1);
    }
  };
  visit(undefined, 0);
  return out;
}

function ms(us: number): string {
  return us >= 1000 ? `${(us / 1000).toFixed(1)} ms` : `${Math.round(us)} µs`;
}

function escape(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}
