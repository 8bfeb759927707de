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
  /**
   * Keys remembered per client (IDEMPOTENCY_KEYS_PER_CLIENT): claiming one more forgets the client's
   * oldest. Without a share, one client sending a new key with every request at 100/s would hold
   * ~2 GB of Redis for the TTL, and the memory guard would then refuse everyone.
   */
  readonly keysPerClient: number;
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

// KEYS: the key's record, the client's index of keys. ARGV: the lease's value, the lease (ms), the
// key's hash, now (ms), TTL (ms), keys per client, the prefix of the client's records. Returns the
// record already there, or nothing when the lease is written: then the key enters the client's
// index, whose entries past the TTL are dropped and whose oldest beyond the share are forgotten
// (index and record). The records share the prefix's hash tag, so on a cluster they are in one slot.
const CLAIM = `
local previous = redis.call('GET', KEYS[1])
if previous then return previous end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local now = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[5]))
redis.call('ZADD', KEYS[2], now, ARGV[3])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[6])
if over > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #oldest, 2 do redis.call('DEL', ARGV[7] .. oldest[i]) end
end
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return false`;

// KEYS: the key's record. ARGV: the lease's value, the job's value, TTL (s). Only the request
// holding the lease may turn it into the job's record.
const CONFIRM = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0`;

// KEYS: the key's record, the client's index. ARGV: the lease's value, the key's hash. Frees the key
// (and its place in the client's share) only if this lease still holds it.
const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('ZREM', KEYS[2], ARGV[2])
  return redis.call('DEL', KEYS[1])
end
return 0`;

type IdempotencyRedis = Redis & {
  conveyorIdempotencyClaim(
    key: string,
    index: string,
    lease: string,
    leaseMs: number,
    keyHash: string,
    now: number,
    ttlMs: number,
    keysPerClient: number,
    recordPrefix: string,
  ): Promise<string | null>;
  conveyorIdempotencyConfirm(key: string, lease: string, job: string, ttlSeconds: number): Promise<number>;
  conveyorIdempotencyRelease(key: string, index: string, lease: string, keyHash: string): Promise<number>;
};

const RECORD = /^([pj]):([^:]+):([A-Za-z0-9_-]+)$/;

/**
 * The owner of the Idempotency-Key records (`redisKeys.idempotency`, `idempotencyIndex`). One record
 * per key and client: `p:<job id>:<fingerprint>` while the request's job is made (expires after the
 * lease), then `j:<job id>:<fingerprint>` for the TTL. Claiming is one script (the record is either
 * written or read, atomically, and the client's index of keys kept within its share), so of ten
 * concurrent requests with one key exactly one makes a job; confirming and releasing compare the lease before they write (a small Lua script each), so
 * a request whose lease ran out cannot overwrite the request that claimed the key after it.
 */
export class IdempotencyStore {
  private readonly redis: IdempotencyRedis;

  constructor(
    redis: Redis,
    private readonly keys: {
      readonly idempotency: (client: string, keyHash: string) => string;
      readonly idempotencyIndex: (client: string) => string;
    },
    private readonly options: IdempotencyOptions,
  ) {
    redis.defineCommand('conveyorIdempotencyClaim', { numberOfKeys: 2, lua: CLAIM });
    redis.defineCommand('conveyorIdempotencyConfirm', { numberOfKeys: 1, lua: CONFIRM });
    redis.defineCommand('conveyorIdempotencyRelease', { numberOfKeys: 2, lua: RELEASE });
    this.redis = redis as IdempotencyRedis;
  }

  /**
   * Claims `key` for `client`'s request, whose job is to be `jobId`: one round trip. The key is
   * hashed, so its length (up to 255 characters) does not change what Redis holds.
   */
  async claim(client: string, key: string, fingerprint: string, jobId: string): Promise<IdempotencyClaim> {
    const keyHash = createHash('sha256').update(key).digest('base64url');
    const record = this.keys.idempotency(client, keyHash);
    const index = this.keys.idempotencyIndex(client);
    const lease = `p:${jobId}:${fingerprint}`;
    const { leaseMs, ttlSeconds, keysPerClient } = this.options;
    const previous = await this.redis.conveyorIdempotencyClaim(
      record,
      index,
      lease,
      leaseMs,
      keyHash,
      Date.now(),
      ttlSeconds * 1000,
      keysPerClient,
      this.keys.idempotency(client, ''),
    );
    if (previous === null) {
      return {
        kind: 'claimed',
        lease: {
          confirm: async () =>
            (await this.redis.conveyorIdempotencyConfirm(record, lease, `j:${jobId}:${fingerprint}`, this.options.ttlSeconds)) ===
            1,
          release: async () => {
            await this.redis.conveyorIdempotencyRelease(record, index, lease, keyHash);
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
