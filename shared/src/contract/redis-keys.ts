import { QUEUES } from './jobs.contract.js';
import { STREAMS } from './events.contract.js';
import { SHADOW_STREAM } from './shadow.contract.js';

/**
 * Redis keys other than BullMQ's own, all under the deployment prefix: one file, so every key
 * family is declared once and each has one owner (job-store.ts, fleet-store.ts, the gateway's
 * admission, callbacks and API keys).
 *
 * Do not rename a key without a migration: running processes of the previous release share them
 * during a rolling deploy.
 */
export function redisKeys(prefix: string) {
  return {
    ...jobKeys(prefix),
    ...gatewayKeys(prefix),
    ...fleetKeys(prefix),
    ...streamKeys(prefix),
    ...cacheKeys(prefix),
    ...replayKeys(prefix),
  };
}
export type RedisKeys = ReturnType<typeof redisKeys>;

/** One job's keys (JobStore owns them; the gateway's JobCanceller marks a cancellation; BullMQ's lock is read). */
function jobKeys(prefix: string) {
  return {
    /** The uploaded image bytes of a job, stored as a binary string (not base64 inside job JSON). */
    input: (jobId: string) => `${prefix}:input:${jobId}`,
    /** The finished job (result or error), JSON, expires after RESULT_TTL_SECONDS. */
    result: (jobId: string) => `${prefix}:result:${jobId}`,
    /** The callback of an asynchronous job and how its delivery went (CallbackState JSON, api.contract). */
    callback: (jobId: string) => `${prefix}:callback:${jobId}`,
    /**
     * The API key id that made a job (JobStore.putOwner), when keys are required: only it (or an
     * admin key) may read the job, its events, its callback details, or give its feedback. Kept
     * while the job waits (at most INPUT_TTL_SECONDS + RESULT_TTL_SECONDS), then, from the result
     * commit on, exactly as long as the result.
     */
    owner: (jobId: string) => `${prefix}:owner:${jobId}`,
    /**
     * Marks a job cancelled while a worker may hold it (`DELETE /v1/jobs/{id}`): the job's commit
     * (JobStore.commit) then keeps a cancelled result instead of the worker's. Set only while the job
     * has no result; deleted by the commit; expires with the job's longest life otherwise.
     */
    cancelled: (jobId: string) => `${prefix}:cancelled:${jobId}`,
    /** Marks that ground truth was recorded for a job (feedback is accepted once per job). */
    feedback: (jobId: string) => `${prefix}:feedback:${jobId}`,
    /** Pub/sub channel on which workers announce finished jobs to the gateway instance waiting for them. */
    replies: (gatewayId: string) => `${prefix}:replies:${gatewayId}`,
    /**
     * BullMQ's own lock of an active job (bullmq 6: `<prefix>:<queue>:<id>:lock`, holding the
     * processing attempt's token). A worker commits a result only while its attempt holds it;
     * `workers.e2e.test.ts` checks the name against a running BullMQ.
     */
    jobLock: (queue: string, jobId: string) => `${prefix}:${queue}:${jobId}:lock`,
  };
}

/** What the gateways hold per client and per queue: callbacks, Idempotency-Keys, admission, fair queuing, API keys. */
function gatewayKeys(prefix: string) {
  return {
    /**
     * Sorted set of the callbacks a client has pending (gateway callbacks): member the job id, score
     * the time (ms) its delivery gives up at the latest, so a delivery that never settles stops
     * counting by itself. `client` is an API key id (`key:<id>`) or an address (`ip:<address>`).
     */
    callbacksPending: (client: string) => `${prefix}:callbacks:pending:${client}`,
    /**
     * A predict request's Idempotency-Key (gateway, jobs/idempotency.ts): `<state>:<job id>:<fingerprint>`,
     * state `p` while its job is being made (a short lease), then `j` once the job exists, kept
     * IDEMPOTENCY_TTL_SECONDS. Scoped by `client` as callbacksPending is (`key:<id>` or `ip:<address>`);
     * `keyHash` is the key's SHA-256 (base64url), so a key of any length costs the same ~250 bytes.
     */
    idempotency: (client: string, keyHash: string) => `${prefix}:idempotency:${client}:${keyHash}`,
    /**
     * The Idempotency-Keys `client` holds (gateway, jobs/idempotency.ts): sorted set, member the key's
     * hash, score the time (ms) it was claimed. Bounds a client's records: beyond its share, its
     * oldest are forgotten.
     */
    idempotencyIndex: (client: string) => `${prefix}:idempotency-index:${client}`,
    /**
     * Sorted set of places in a queue reserved by requests whose job is not queued yet (gateway
     * admission): member the job id the request will use, score the time (ms) the place lapses. The
     * legacy queue keeps the key it always had, so old and new gateways count the same places.
     */
    admissionReserved: (queue: string) =>
      queue === QUEUES.inference ? `${prefix}:admission:reservations` : `${prefix}:admission:reservations:${queue}`,
    /**
     * Fair queuing of a model's queue (gateway, jobs/fair-queue.ts), per priority band: hash tenant →
     * its last job's virtual finish time, deleted when the band is found empty. `normal` keeps the
     * key it had before there were bands (gateways of both releases share it in a rolling deploy).
     */
    fairFinish: (queue: string, band: 'high' | 'normal' | 'low' = 'normal') =>
      band === 'normal' ? `${prefix}:fair:${queue}:finish` : `${prefix}:fair:${queue}:finish:${band}`,
    /**
     * Fair queuing: sorted set of one tenant's places in a model's queue, all bands (member job id,
     * score its band's first priority + its virtual start), pruned from the bottom once they left.
     */
    fairPlaces: (queue: string, tenant: string) => `${prefix}:fair:${queue}:places:${tenant}`,
    /**
     * The images admission counts, one field per job: job id → `<bytes> <job key prefix> <reservations
     * key>`. Set at admission, corrected once the image is stored, removed by the job's result commit,
     * by a request that failed, or by the gateways' reconciliation once the job no longer waits (removed
     * by an operator, failed without a commit). Each job's bytes are given back once, by whoever removes
     * its field, so the sum cannot drift from the jobs that exist. (The counter this replaced,
     * `admission:queued-bytes`, fell only in the commit: a queue emptied from the dashboard kept its
     * bytes counted for ever.)
     */
    queuedImages: `${prefix}:admission:queued-images`,
    /** The sum of queuedImages' bytes, kept by the same scripts that change it (admission reads one key). */
    queuedBytes: `${prefix}:admission:queued-images:bytes`,
    /** Hash of API keys: id → JSON { name, sha256 of the key, scopes, createdAt } (never the key itself). */
    apiKeys: `${prefix}:api-keys`,
  };
}

/** The worker fleet (FleetStore owns them): heartbeats, announcements, the models' labels. */
function fleetKeys(prefix: string) {
  return {
    /** Hash `name@version` → JSON array of the model's labels, written by the workers serving it. */
    modelLabels: `${prefix}:model-labels`,
    /**
     * Hash serving name → ModelAnnouncement JSON: every model a worker has ever announced (warm and
     * serving), with the version and input it announced last. Never expires: a model once served
     * stays known (async requests for it are queued while no worker is up); `HDEL` retires one.
     */
    models: `${prefix}:models`,
    /** Sorted set of live workers, scored by the time their heartbeat expires. */
    workers: `${prefix}:workers`,
    /** Heartbeat details of one worker, JSON, with a TTL. */
    worker: (workerId: string) => `${prefix}:worker:${workerId}`,
  };
}

/**
 * The shared result cache (ResultCacheStore, result-cache-store.ts, owns them all): workers store
 * answers, gateways read them and keep the in-flight records. Per serving name, so each model has
 * its own byte budget. `entry` is a cacheEntryKey (cache.contract.ts).
 */
function cacheKeys(prefix: string) {
  return {
    /** A cached answer (CachedAnswer JSON), expiring after RESULT_CACHE_TTL_SECONDS. */
    resultCache: (model: string, entry: string) => `${prefix}:result-cache:${model}:${entry}`,
    /** Sorted set of a model's entries: member the entry key, score when it was stored (ms); evicted oldest first. */
    resultCacheIndex: (model: string) => `${prefix}:result-cache-index:${model}`,
    /** Hash of a model's entries: entry key → `<bytes> <client>`, the field `#bytes` is their sum, `#seq` orders entries stored within one ms. */
    resultCacheSizes: (model: string) => `${prefix}:result-cache-sizes:${model}`,
    /**
     * Hash `{ serving, gen }`: the (version|spec) a worker of the model began serving last, and the
     * generation entries are served under (ResultCacheStore.begin). Never expires (a few bytes per model).
     */
    resultCacheServing: (model: string) => `${prefix}:result-cache-serving:${model}`,
    /** Sorted set of the entries one client's jobs stored for a model (its share: RESULT_CACHE_ENTRIES_PER_CLIENT). */
    resultCacheClient: (model: string, client: string) => `${prefix}:result-cache-client:${model}:${client}`,
    /**
     * Hash `{ job, followers }`: the job identical synchronous requests of one client wait for while it is
     * queued or running (`inflight` = `<entry>:<client>`), and how many wait beside its own caller.
     * Cleared by the job's final commit; lapses after INPUT_TTL_SECONDS otherwise.
     */
    resultCacheInflight: (model: string, inflight: string) => `${prefix}:result-cache-inflight:${model}:${inflight}`,
  };
}

/** The workers' live replay recording (services/inference-worker/src/replay/replay-recorder.ts owns them). */
function replayKeys(prefix: string) {
  return {
    /**
     * Examples of `model` recorded on `day` (UTC, YYYY-MM-DD) by all workers together: INCR before each
     * write, refused past REPLAY_DAILY_LIMIT. Expires two days after its first increment.
     */
    replayDaily: (model: string, day: string) => `${prefix}:replay:daily:${model}:${day}`,
    /** Held (SET NX, with an expiry) by the one worker applying REPLAY_RETENTION_DAYS to the store for a while. */
    replayRetention: `${prefix}:replay:retention`,
  };
}

/** The event streams (predictions, feedback, alerts, shadow pairs). */
function streamKeys(prefix: string) {
  return {
    predictions: `${prefix}:${STREAMS.predictions}`,
    feedbackStream: `${prefix}:${STREAMS.feedback}`,
    alerts: `${prefix}:${STREAMS.alerts}`,
    /** Shadow pairs (ShadowEvent, shadow.contract.ts): written by workers' shadow lanes, trimmed to SHADOW_STREAM_MAXLEN. */
    shadowStream: `${prefix}:${SHADOW_STREAM}`,
  };
}
