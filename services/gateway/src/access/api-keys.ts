import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Redis } from '@conveyor/shared/redis';
import { z } from 'zod';
import type { KeyIdentity } from '../http/context.js';
import { PRIORITIES, type Priority } from '../http/priority.js';

/**
 * API keys: `cvk_<id>_<secret>`. Redis keeps, per id, the SHA-256 of the whole key (never the key
 * itself), its name and its scopes; a presented key is looked up by its id and its digest compared
 * in constant time. A key shown once at creation cannot be recovered from what is stored.
 */
export const SCOPES = ['predict', 'feedback', 'admin'] as const;
export const Scope = z.enum(SCOPES);
export type Scope = z.infer<typeof Scope>;

/** The largest weight a key may have (a weight of w lets it take w jobs for another's one). */
export const MAX_WEIGHT = 1000;

const StoredKey = z.object({
  name: z.string(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  scopes: z.array(Scope),
  /**
   * The key's share of worker time against other keys under load (fair queuing, jobs/fair-queue.ts):
   * a key of weight 3 is served three jobs for one of a key of weight 1 while both have jobs waiting.
   * Added later: keys stored before it have weight 1.
   */
  weight: z.number().int().min(1).max(MAX_WEIGHT).default(1),
  /**
   * The highest `Prefer: priority=` its requests are served at (higher asks are capped to it). Added
   * later: keys stored before it have `normal`, as new keys do unless made with a higher one.
   */
  maxPriority: z.enum(PRIORITIES).default('normal'),
  createdAt: z.iso.datetime(),
});
export type StoredKey = z.infer<typeof StoredKey>;

/** What a request learns of its key (the request state's KeyIdentity, with the scopes typed). */
export interface ApiKeyIdentity extends KeyIdentity {
  readonly scopes: readonly Scope[];
}

const FORMAT = /^cvk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$/;

const digest = (key: string) => createHash('sha256').update(key).digest();

export class ApiKeyStore {
  constructor(
    private readonly redis: Redis,
    private readonly hashKey: string,
  ) {}

  /** Creates a key and returns it: the only time it is ever shown. */
  async create(
    name: string,
    scopes: readonly Scope[],
    weight = 1,
    maxPriority: Priority = 'normal',
  ): Promise<{ id: string; key: string }> {
    const id = randomBytes(6).toString('hex');
    const key = `cvk_${id}_${randomBytes(32).toString('base64url')}`;
    const stored: StoredKey = {
      name,
      sha256: digest(key).toString('hex'),
      scopes: [...scopes],
      weight: z.number().int().min(1).max(MAX_WEIGHT).parse(weight),
      maxPriority: z.enum(PRIORITIES).parse(maxPriority),
      createdAt: new Date().toISOString(),
    };
    await this.redis.hset(this.hashKey, id, JSON.stringify(stored));
    return { id, key };
  }

  async revoke(id: string): Promise<boolean> {
    return (await this.redis.hdel(this.hashKey, id)) === 1;
  }

  async list(): Promise<(StoredKey & { id: string })[]> {
    const all = await this.redis.hgetall(this.hashKey);
    return Object.entries(all).map(([id, raw]) => ({ id, ...StoredKey.parse(JSON.parse(raw)) }));
  }

  /** The identity behind a presented key, or undefined for a malformed, unknown or revoked one. */
  async verify(presented: string): Promise<ApiKeyIdentity | undefined> {
    const match = FORMAT.exec(presented);
    if (!match) return undefined;
    const id = match[1]!;
    const raw = await this.redis.hget(this.hashKey, id);
    if (raw === null) return undefined;
    const stored = StoredKey.parse(JSON.parse(raw));
    if (!timingSafeEqual(digest(presented), Buffer.from(stored.sha256, 'hex'))) return undefined;
    return { id, name: stored.name, scopes: stored.scopes, weight: stored.weight, maxPriority: stored.maxPriority };
  }
}
