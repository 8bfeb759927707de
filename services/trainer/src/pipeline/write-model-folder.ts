import { createHash } from 'node:crypto';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { MANIFEST_FILE, ModelManifest, type ModelManifestInput } from '@conveyor/shared/model/manifest';

/**
 * Writes a model folder (model.onnx + manifest.json + any reports) atomically: into a sibling
 * temporary folder first, then renamed over the target, so a reader never sees half a model.
 */
export async function writeModelFolder(
  dir: string,
  onnx: Uint8Array,
  manifest: Omit<ModelManifestInput, 'sha256'>,
  extras: Record<string, string> = {},
): Promise<ModelManifest> {
  const sha256 = createHash('sha256').update(onnx).digest('hex');
  const full = ModelManifest.parse({ ...manifest, sha256 });
  const staging = `${dir}.tmp-${process.pid}`;
  await rm(staging, { recursive: true, force: true });
  await mkdir(staging, { recursive: true });
  await writeFile(path.join(staging, full.file), onnx);
  await writeFile(path.join(staging, MANIFEST_FILE), `${JSON.stringify(full, null, 2)}\n`);
  for (const [name, content] of Object.entries(extras)) await writeFile(path.join(staging, name), content);
  await rm(dir, { recursive: true, force: true });
  await mkdir(path.dirname(dir), { recursive: true });
  await rename(staging, dir);
  return full;
}

export function contentVersion(onnx: Uint8Array): string {
  return `sha-${createHash('sha256').update(onnx).digest('hex').slice(0, 12)}`;
}
