import { cacheEntryKey, imageDigest, type JobCache, type ServedAs } from '@conveyor/shared/contract/cache.contract';

/** What a caller's `Cache-Control` asks of the result cache (RFC 9111 §5.2.1). */
export interface CacheDirectives {
  /** `no-cache`: no stored answer, no merging with another request: a fresh inference (its answer is stored). */
  readonly noCache: boolean;
  /** `no-store`: as no-cache, and the answer is not stored either. */
  readonly noStore: boolean;
}

/** The request directives that matter here; any other directive (max-age, …) is ignored. */
export function cacheDirectives(header: string | undefined): CacheDirectives {
  let noCache = false;
  let noStore = false;
  for (const part of (header ?? '').split(',')) {
    const name = part.split('=', 1)[0]!.trim().toLowerCase();
    if (name === 'no-cache') noCache = true;
    else if (name === 'no-store') noStore = true;
  }
  return { noCache, noStore };
}

/** What a predict request is, as far as the result cache is concerned. */
export interface CacheRequest {
  readonly model: string;
  /** The one (version, answer spec) live workers serve now (ModelStatus.servedAs). */
  readonly servedAs: ServedAs | undefined;
  readonly bytes: Buffer;
  /** Whose share an entry counts against, and whose requests may merge (clientOf). */
  readonly client: string;
  readonly directives: CacheDirectives;
  /** The caller waits for the result (not `Prefer: respond-async`). */
  readonly waits: boolean;
  readonly callback: boolean;
  readonly idempotencyKey: boolean;
  readonly deadline: boolean;
}

/** Why a request neither reads the cache nor merges (the `detail` of `Cache-Status: conveyor; fwd=bypass`). */
export type CacheBypass = 'callback' | 'idempotency-key' | 'versions';

/** How one request uses the result cache (docs/result-cache.md). */
export interface CachePlan {
  /** The job's cache facts (its answer is stored); absent with `no-store`. */
  readonly facts?: JobCache | undefined;
  /** The entry to look up; absent when the request bypasses the cache. */
  readonly entry?: string | undefined;
  /** The in-flight record identical requests of the client share; absent when the request does not merge. */
  readonly inflight?: string | undefined;
  /** Why no look-up: the caller's directive, or a reason of the gateway's. */
  readonly bypass?: 'request' | CacheBypass | undefined;
}

/**
 * Decides what the cache does for one request: read only for callers who take any answer
 * (no `Cache-Control: no-cache`/`no-store`), with no Callback-Url (its receiver waits for a POST a hit
 * would not make) and no Idempotency-Key (its key names a job, which a hit does not make), and only
 * while one version is live (during a rolling swap the answer would depend on which worker took the
 * job). Merging in flight is for synchronous callers without a deadline only: an asynchronous caller's
 * 202 names its own job, and a deadline is the caller's own, which a shared job would not honour.
 * Merging is per client: the job waited for is the first caller's (its owner, its id), so it is shared
 * only with requests that could read it anyway.
 */
export function planCache(request: CacheRequest): CachePlan {
  const { directives, model, servedAs, client } = request;
  const facts = directives.noStore ? undefined : { image: imageDigest(request.bytes), client };
  if (directives.noCache || directives.noStore) return { facts, bypass: 'request' };
  const bypass: CacheBypass | undefined = request.callback
    ? 'callback'
    : request.idempotencyKey
      ? 'idempotency-key'
      : servedAs
        ? undefined
        : 'versions';
  if (bypass || !servedAs || !facts) return { facts, bypass };
  const entry = cacheEntryKey(model, servedAs, facts.image);
  const inflight = request.waits && !request.deadline ? `${entry}:${client}` : undefined;
  return { facts, entry, inflight };
}

/** How the request was answered, for `Cache-Status` (RFC 9211). */
export type CacheOutcome =
  | { readonly kind: 'hit' }
  | { readonly kind: 'collapsed' }
  | { readonly kind: 'miss' }
  | { readonly kind: 'bypass'; readonly reason: 'request' | CacheBypass };

/** The `Cache-Status` field value (RFC 9211) naming this cache `conveyor`. */
export function cacheStatus(outcome: CacheOutcome): string {
  switch (outcome.kind) {
    case 'hit':
      return 'conveyor; hit';
    case 'collapsed':
      return 'conveyor; fwd=miss; collapsed';
    case 'miss':
      return 'conveyor; fwd=miss';
    case 'bypass':
      return outcome.reason === 'request' ? 'conveyor; fwd=request' : `conveyor; fwd=bypass; detail=${outcome.reason}`;
  }
}
