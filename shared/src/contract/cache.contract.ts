import { createHash } from 'node:crypto';
import { z } from 'zod';
import { InputDescriptors, ModelRef, Prediction } from './common.contract.js';

/**
 * The shared result cache's part of the contract (docs/result-cache.md): what a job carries for it,
 * what an entry holds, and how an entry's key is made. The store is result-cache-store.ts.
 */

/** A SHA-256 digest, base64url without padding. */
export const Sha256Digest = z.string().regex(/^[A-Za-z0-9_-]{43}$/, 'a SHA-256 digest in base64url');

/**
 * The cache facts of an inference job (`InferenceJob.cache`), written by the gateway. Present when the
 * result may be stored (RESULT_CACHE on, and the caller did not send `Cache-Control: no-store`).
 * Added within version 1 of the job: workers of the previous release ignore it (they store nothing and
 * never clear `inflight`, whose record then lapses after its TTL).
 */
export const JobCache = z.object({
  /** SHA-256 of the image bytes, computed once by the gateway (the worker does not hash them again). */
  image: Sha256Digest,
  /** Whose share of the model's cache the entry counts against (an API key `key:<id>` or `ip:<address>`). */
  client: z.string().min(1).max(200),
  /**
   * The in-flight record this job leads (`redisKeys().resultCacheInflight(model, inflight)`): identical
   * synchronous requests of the same client wait for this job instead of queueing their own. The
   * commit of the job's final result clears it.
   */
  inflight: z.string().min(1).max(300).optional(),
});
export type JobCache = z.infer<typeof JobCache>;

/**
 * A cached answer: the completed result's parts that depend on the model and the image only. The ids
 * of the job that computed it (its id, request id, owner) are not kept, so no caller learns another's
 * job from a hit.
 */
export const CachedAnswer = z.object({
  kind: z.literal('cached-answer'),
  version: z.literal(1),
  model: ModelRef,
  prediction: Prediction,
  input: InputDescriptors,
  /** The worker that computed it, and when it finished (ISO). */
  worker: z.string(),
  finishedAt: z.iso.datetime(),
  /** When it was stored (epoch ms): a hit's `Age`. */
  storedAt: z.number().int().positive(),
});
export type CachedAnswer = z.infer<typeof CachedAnswer>;

/** What an answer's key depends on besides the image: the version served and its answer spec. */
export interface ServedAs {
  readonly version: string;
  /** The worker's answerSpec() of that version (model/answer-spec.ts). */
  readonly spec: string;
}

/**
 * The key of a cached answer: SHA-256 over (serving name, version, answer spec, image digest). The
 * gateway computes it from the one (version, spec) live workers serve now; the worker from the
 * version that actually ran. After a swap the key changes, so an old version's answer is never found.
 */
export function cacheEntryKey(model: string, served: ServedAs, image: string): string {
  // The JSON array cannot be mistaken for another: every part is a quoted string.
  return createHash('sha256')
    .update(JSON.stringify([1, model, served.version, served.spec, image]))
    .digest('base64url');
}

/** SHA-256 of an image's bytes (base64url). */
export function imageDigest(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('base64url');
}
