import sharp from 'sharp';

/**
 * Human-facing artifacts of a run: the confusion matrix as a PNG (an SVG rendered by sharp's
 * librsvg, no browser or canvas needed) and the MLflow `MLmodel` file of the model folder.
 */
export async function confusionMatrixPng(
  confusion: readonly (readonly number[])[],
  labels: readonly string[],
  title: string,
  /** The names of the rows and the columns: a training run's truth against its predictions by default. */
  axes: { rows: string; columns: string } = { rows: 'actual', columns: 'predicted' },
): Promise<Buffer> {
  const k = labels.length;
  const cell = 44;
  const left = 70;
  const top = 70;
  const size = left + k * cell + 30;
  const rowTotals = confusion.map((row) => row.reduce((a, b) => a + b, 0));
  const esc = (s: string) => s.replace(/[<>&"]/g, (c) => `&#${c.charCodeAt(0)};`);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${size}" height="${size + 20}" font-family="DejaVu Sans, sans-serif">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${size / 2}" y="24" text-anchor="middle" font-size="15" font-weight="bold">${esc(title)}</text>`,
    `<text x="${left + (k * cell) / 2}" y="${top - 24}" text-anchor="middle" font-size="12">${esc(axes.columns)}</text>`,
    `<text x="18" y="${top + (k * cell) / 2}" text-anchor="middle" font-size="12" transform="rotate(-90 18 ${top + (k * cell) / 2})">${esc(axes.rows)}</text>`,
  ];
  labels.forEach((label, i) => {
    parts.push(`<text x="${left + i * cell + cell / 2}" y="${top - 6}" text-anchor="middle" font-size="12">${esc(label)}</text>`);
    parts.push(
      `<text x="${left - 8}" y="${top + i * cell + cell / 2 + 4}" text-anchor="end" font-size="12">${esc(label)}</text>`,
    );
  });
  confusion.forEach((row, i) => {
    row.forEach((count, j) => {
      const total = rowTotals[i] ?? 0;
      const share = total ? count / total : 0;
      // Diagonal in blue, mistakes in red, intensity by share of the actual class.
      const shade = Math.round(255 - Math.min(1, i === j ? share : share * 8) * 200);
      const fill = i === j ? `rgb(${shade},${shade},255)` : `rgb(255,${shade},${shade})`;
      const x = left + j * cell;
      const y = top + i * cell;
      parts.push(`<rect x="${x}" y="${y}" width="${cell}" height="${cell}" fill="${fill}" stroke="#ccc"/>`);
      if (count)
        parts.push(`<text x="${x + cell / 2}" y="${y + cell / 2 + 4}" text-anchor="middle" font-size="11">${count}</text>`);
    });
  });
  parts.push('</svg>');
  return sharp(Buffer.from(parts.join('')))
    .png()
    .toBuffer();
}

/** The MLflow model descriptor: an `onnx` flavor, plus Conveyor's own manifest. */
export function mlmodelYaml(options: { runId: string; onnxFile: string; mlflowVersion?: string; createdAt?: Date }): string {
  const created = (options.createdAt ?? new Date()).toISOString().replace('T', ' ').replace('Z', '');
  return [
    'artifact_path: model',
    'flavors:',
    '  onnx:',
    '    code: null',
    `    data: ${options.onnxFile}`,
    '    onnx_version: 1.10.2',
    '    providers:',
    '    - CPUExecutionProvider',
    '  conveyor:',
    '    manifest: manifest.json',
    '    reference_profile: reference-profile.json',
    `mlflow_version: ${options.mlflowVersion ?? '3.17.2'}`,
    `run_id: ${options.runId}`,
    `utc_time_created: '${created}'`,
    '',
  ].join('\n');
}
