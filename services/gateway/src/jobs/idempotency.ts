import { createHash } from 'node:crypto';
import type { Redis } from '@conveyor/shared/redis';
import type { PredictInput } from '../intake/read-input.js';

/** What a request's Idempotency-Key found. */
export type IdempotencyClaim =
  /** The key was free: it is this request's now, while its job is made (see IdempotencyLease). */
  | { readonly kind: 'claimed'; readonly lease: IdempotencyLease }
  /** The key made a job for the same request: this is a retry, answered with that job. */
  | { readonly kind: 'replay'; readonly jobId: string }
  /** Another request with the key is still being accepted (its job may yet fail to exist). */
  | { readonly kind: 'in-flight' }
  /** The key was used for a different request. */
  | { readonly kind: 'mismatch' };

/** A claimed key, held while the request's job is made. */
export interface IdempotencyLease {
  /**
   * The job exists: from now on the key names it for IDEMPOTENCY_TTL_SECONDS. False when the lease
   * had run out and the key was claimed again meanwhile (the job exists all the same; logged).
   */
  confirm(): Promise<boolean>;
  /** No job was made (a refused image, a failed queueing): the key is free again. */
  release(): Promise<void>;
}

export interface IdempotencyOptions {
  /** How long a key names its job once the job exists (IDEMPOTENCY_TTL_SECONDS). */
  readonly ttlSeconds: number;
  /**
   * How long a claim holds the key before its job exists. A gateway that dies while making the job
   * leaves the key claimed this long, not for the TTL; it must outlast the slowest making of a job
   * (a URL fetch, URL_TOTAL_TIMEOUT_MS, is the longest step).
   */
  readonly leaseMs: number;
}

/** What a retry must repeat for it to be the same request: the parts that decide the job's outcome. */
export interface RequestFacts {
  /** The model the job is for (resolved: /v1/predict and /v1/models/<default>/predict are one). */
  readonly model: string;
  /** The uploaded bytes, or the URL as given (a replay must not fetch it to compare). */
  readonly input: PredictInput;
  /** Where the result is to be POSTed: a different receiver is a different request. */
  readonly callbackUrl?: URL | undefined;
}

/**
 * The request's fingerprint (SHA-256, base64url): model, the image bytes or the URL, the
 * Callback-Url. Not in it: how the caller waits (Prefer: a sync call that timed out may be retried
 * asynchronously), the multipart filename, the request id and the connection's headers, none of
 * which change what the job computes or where its result goes.
 */
export function requestFingerprint(facts: RequestFacts): string {
  const { input } = facts;
  // The JSON ends with `]`, so the bytes after it cannot be mistaken for part of it.
  const head = JSON.stringify([
    1,
    facts.model,
    input.kind,
    input.kind === 'url' ? input.url.href : null,
    facts.callbackUrl?.href ?? null,
  ]);
  const hash = createHash('sha256').update(head);
  if (input.kind === 'upload') hash.update(input.bytes);
  return hash.digest('base64url');
}

// KEYS: the key's record. ARGV: the lease's value, the job's value, TTL (s). Only the request
// holding the lease may turn it into the job's record.
const CONFIRM = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0`;

// KEYS: the key's record. ARGV: the lease's value. Frees the key only if this lease still holds it.
const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`;

type IdempotencyRedis = Redis & {
  conveyorIdempotencyConfirm(key: string, lease: string, job: string, ttlSeconds: number): Promise<number>;
  conveyorIdempotencyRelease(key: string, lease: string): Promise<number>;
};

const RECORD = /^([pj]):([^:]+):([A-Za-z0-9_-]+)$/;

/**
 * The owner of the Idempotency-Key records (`redisKeys.idempotency`). One record per key and client:
 * `p:<job id>:<fingerprint>` while the request's job is made (expires after the lease), then
 * `j:<job id>:<fingerprint>` for the TTL. Claiming is one command (SET NX PX GET: the record is
 * either written or read, atomically), so of ten concurrent requests with one key exactly one makes
 * a job; confirming and releasing compare the lease before they write (a small Lua script each), so
 * a request whose lease ran out cannot overwrite the request that claimed the key after it.
 */
export class IdempotencyStore {
  private readonly redis: IdempotencyRedis;

  constructor(
    redis: Redis,
    private readonly keys: { readonly idempotency: (client: string, keyHash: string) => string },
    private readonly options: IdempotencyOptions,
  ) {
    redis.defineCommand('conveyorIdempotencyConfirm', { numberOfKeys: 1, lua: CONFIRM });
    redis.defineCommand('conveyorIdempotencyRelease', { numberOfKeys: 1, lua: RELEASE });
    this.redis = redis as IdempotencyRedis;
  }

  /**
   * Claims `key` for `client`'s request, whose job is to be `jobId`: one round trip. The key is
   * hashed, so its length (up to 255 characters) does not change what Redis holds.
   */
  async claim(client: string, key: string, fingerprint: string, jobId: string): Promise<IdempotencyClaim> {
    const record = this.keys.idempotency(client, createHash('sha256').update(key).digest('base64url'));
    const lease = `p:${jobId}:${fingerprint}`;
    const previous = await this.redis.set(record, lease, 'PX', this.options.leaseMs, 'NX', 'GET');
    if (previous === null) {
      return {
        kind: 'claimed',
        lease: {
          confirm: async () =>
            (await this.redis.conveyorIdempotencyConfirm(record, lease, `j:${jobId}:${fingerprint}`, this.options.ttlSeconds)) ===
            1,
          release: async () => {
            await this.redis.conveyorIdempotencyRelease(record, lease);
          },
        },
      };
    }
    const found = RECORD.exec(previous);
    // A record this release cannot read (a later one's format): the key is not free; it lapses.
    if (!found) return { kind: 'in-flight' };
    const [, state, previousJob, previousPrint] = found;
    if (previousPrint !== fingerprint) return { kind: 'mismatch' };
    return state === 'j' ? { kind: 'replay', jobId: previousJob! } : { kind: 'in-flight' };
  }
}
