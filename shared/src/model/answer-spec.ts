import { createHash } from 'node:crypto';
import type { ModelManifest } from './manifest.js';
import { topKFor } from './runtime.js';

/**
 * Everything a worker's answer depends on besides the image and the version's name: the model file
 * (its sha256), the input and preprocessing spec, the output, the labels and the number of classes
 * listed (`topK`, the manifest's or the worker's TOP_K). Two workers with the same answer spec give
 * the same answer to the same image; the result cache keys entries by it (cache.contract.ts), so a
 * model re-exported under the same version, or a worker with another TOP_K, never shares entries.
 */
export function answerSpec(manifest: ModelManifest, topK: number | undefined): string {
  const { sha256, input, preprocess, output, labels } = manifest;
  return createHash('sha256')
    .update(JSON.stringify([1, sha256, input, preprocess, output, labels, topKFor(manifest, topK)]))
    .digest('base64url')
    .slice(0, 22);
}
