import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import sharp from 'sharp';
import { servingName } from '@conveyor/shared/contract/common.contract';
import type { WindowRecord } from '../store/store-records.js';

/**
 * Drift reports: a CSV with one row per window and feature, and a PNG with one small chart per
 * model version and feature (its value per window, warn and alert thresholds drawn in), rendered
 * from SVG by sharp. `model` is the serving name, as in the metrics.
 */
export function toCsv(records: readonly WindowRecord[]): string {
  const lines = ['evaluated_at,model,version,window,size,from,to,feature,metric,value,js,level,state,warn,alert'];
  for (const r of records) {
    for (const [feature, f] of Object.entries(r.features)) {
      lines.push(
        [
          r.evaluatedAt,
          servingName(r),
          r.model.version,
          r.index,
          r.size,
          r.from,
          r.to,
          feature,
          f.metric,
          f.value.toFixed(6),
          f.js === null ? '' : f.js.toFixed(6),
          f.level,
          f.state,
          f.warn,
          f.alert,
        ]
          .map((v) => (typeof v === 'string' && /[",\n]/.test(v) ? `"${v.replaceAll('"', '""')}"` : String(v)))
          .join(','),
      );
    }
  }
  return `${lines.join('\n')}\n`;
}

export async function toPng(records: readonly WindowRecord[], title: string): Promise<Buffer> {
  // One chart per model version and feature: windows of different models never share a line.
  const evaluated = records.filter((r) => r.status === 'evaluated');
  const versionOf = (r: WindowRecord) => `${servingName(r)}@${r.model.version}`;
  const panels: { version: string; feature: string; windows: WindowRecord[] }[] = [];
  for (const version of new Set(evaluated.map(versionOf))) {
    const windows = evaluated.filter((r) => versionOf(r) === version);
    for (const feature of new Set(windows.flatMap((r) => Object.keys(r.features)))) panels.push({ version, feature, windows });
  }
  const several = new Set(panels.map((p) => p.version)).size > 1;
  const cols = 2;
  const w = 560;
  const h = 240;
  const rows = Math.max(1, Math.ceil(panels.length / cols));
  const width = cols * w;
  const height = rows * h + 50;
  const esc = (s: string) => s.replace(/[<>&"]/g, (c) => `&#${c.charCodeAt(0)};`);
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="DejaVu Sans, sans-serif" font-size="11">`,
    '<rect width="100%" height="100%" fill="white"/>',
    `<text x="${width / 2}" y="28" text-anchor="middle" font-size="16" font-weight="bold">${esc(title)}</text>`,
  ];
  panels.forEach(({ version, feature, windows }, i) => {
    const x0 = (i % cols) * w + 60;
    const y0 = Math.floor(i / cols) * h + 60;
    const pw = w - 140;
    const ph = h - 70;
    const points = windows
      .filter((r) => r.features[feature])
      .map((r, k) => ({ k, v: r.features[feature]!.value, f: r.features[feature]! }));
    const first = points[0]?.f;
    const warn = first?.warn ?? 0.1;
    const alert = first?.alert ?? 0.25;
    // The axis stops at twice the alert threshold (at least 1): a PSI of 5 would flatten the
    // thresholds into the floor. Values above the top are drawn at the top with their figure.
    const maxV = Math.min(Math.max(alert * 2, 1), Math.max(alert * 1.4, ...points.map((p) => p.v)));
    const sx = (k: number) => x0 + (points.length > 1 ? (k / (points.length - 1)) * pw : pw / 2);
    const sy = (v: number) => y0 + ph - (Math.min(v, maxV) / maxV) * ph;
    parts.push(
      `<text x="${x0}" y="${y0 - 10}" font-size="13" font-weight="bold">${esc(several ? `${version} · ${feature}` : feature)} (${esc(first?.metric ?? '')})</text>`,
    );
    parts.push(`<rect x="${x0}" y="${y0}" width="${pw}" height="${ph}" fill="#fafafa" stroke="#999"/>`);
    for (const [v, colour, label] of [
      [warn, '#e0a000', 'warn'],
      [alert, '#d00000', 'alert'],
    ] as const) {
      parts.push(`<line x1="${x0}" x2="${x0 + pw}" y1="${sy(v)}" y2="${sy(v)}" stroke="${colour}" stroke-dasharray="5,4"/>`);
      parts.push(`<text x="${x0 + pw + 4}" y="${sy(v) + 4}" fill="${colour}">${label} ${v}</text>`);
    }
    parts.push(
      `<text x="${x0 - 6}" y="${y0 + ph}" text-anchor="end">0</text><text x="${x0 - 6}" y="${y0 + 8}" text-anchor="end">${maxV.toFixed(2)}</text>`,
    );
    parts.push(`<text x="${x0 + pw / 2}" y="${y0 + ph + 24}" text-anchor="middle">window</text>`);
    if (points.length > 1)
      parts.push(
        `<polyline fill="none" stroke="#1f5fbf" stroke-width="2" points="${points.map((p) => `${sx(p.k)},${sy(p.v)}`).join(' ')}"/>`,
      );
    for (const p of points) {
      const colour = p.f.state === 'alert' ? '#d00000' : p.f.state === 'warn' ? '#e0a000' : '#1f5fbf';
      parts.push(`<circle cx="${sx(p.k)}" cy="${sy(p.v)}" r="3.5" fill="${colour}"/>`);
      if (p.v > maxV)
        parts.push(`<text x="${sx(p.k)}" y="${y0 + 12}" text-anchor="middle" font-size="10">${p.v.toFixed(1)}</text>`);
    }
    if (points.length > 0) {
      parts.push(`<text x="${sx(0)}" y="${y0 + ph + 12}" text-anchor="middle">${windows[0]!.index}</text>`);
      parts.push(`<text x="${sx(points.length - 1)}" y="${y0 + ph + 12}" text-anchor="middle">${windows.at(-1)!.index}</text>`);
    }
  });
  if (panels.length === 0)
    parts.push(`<text x="${width / 2}" y="${height / 2}" text-anchor="middle">no evaluated windows yet</text>`);
  parts.push('</svg>');
  return sharp(Buffer.from(parts.join('')))
    .png()
    .toBuffer();
}

export async function writeReport(
  records: readonly WindowRecord[],
  dir: string,
  name = 'drift',
): Promise<{ csv: string; png: string }> {
  await mkdir(dir, { recursive: true });
  const csv = path.join(dir, `${name}.csv`);
  const png = path.join(dir, `${name}.png`);
  await writeFile(csv, toCsv(records));
  await writeFile(
    png,
    await toPng(
      records,
      'Drift per window (PSI; embedding: share of drifted principal components). Dots: state after the window',
    ),
  );
  return { csv, png };
}
