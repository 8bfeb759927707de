import { expect } from 'chai';
import { cacheEntryKey, imageDigest } from '@conveyor/shared/contract/cache.contract';
import { cacheDirectives, cacheStatus, planCache, type CacheRequest } from '../src/jobs/result-cache.js';

/** Who reads the result cache and who merges (docs/result-cache.md, "Who gets what"). */
describe('result cache plan', () => {
  const bytes = Buffer.from('an image');
  const servedAs = { version: 'v1', spec: 'spec' };
  const sync: CacheRequest = {
    model: 'digits',
    servedAs,
    bytes,
    client: 'ip:10.0.0.1',
    directives: { noCache: false, noStore: false },
    waits: true,
    callback: false,
    idempotencyKey: false,
    deadline: false,
  };
  const entry = cacheEntryKey('digits', servedAs, imageDigest(bytes));

  it('reads Cache-Control request directives, case and parameters aside', () => {
    expect(cacheDirectives(undefined)).to.deep.equal({ noCache: false, noStore: false });
    expect(cacheDirectives('max-age=0, No-Cache')).to.deep.equal({ noCache: true, noStore: false });
    expect(cacheDirectives('no-store')).to.deep.equal({ noCache: false, noStore: true });
    expect(cacheDirectives('no-cache="x", private')).to.deep.equal({ noCache: true, noStore: false });
  });

  it('lets a synchronous caller read the cache and merge with the same client’s identical requests', () => {
    expect(planCache(sync)).to.deep.equal({
      facts: { image: imageDigest(bytes), client: 'ip:10.0.0.1' },
      entry,
      inflight: `${entry}:ip:10.0.0.1`,
    });
  });

  it('lets asynchronous callers and callers with a deadline read but not merge', () => {
    for (const request of [
      { ...sync, waits: false },
      { ...sync, deadline: true },
    ]) {
      const plan = planCache(request);
      expect(plan.entry).to.equal(entry);
      expect(plan.inflight).to.equal(undefined);
    }
  });

  it('bypasses the cache for a callback, an Idempotency-Key, or two versions live, but still stores the answer', () => {
    const facts = { image: imageDigest(bytes), client: 'ip:10.0.0.1' };
    expect(planCache({ ...sync, callback: true })).to.deep.equal({ facts, bypass: 'callback' });
    expect(planCache({ ...sync, idempotencyKey: true })).to.deep.equal({ facts, bypass: 'idempotency-key' });
    const swap = planCache({ ...sync, servedAs: undefined });
    expect(swap).to.deep.equal({ facts, bypass: 'versions' });
  });

  it('honours no-cache (stored, not read) and no-store (neither)', () => {
    const noCache = planCache({ ...sync, directives: { noCache: true, noStore: false } });
    expect(noCache).to.deep.equal({ facts: { image: imageDigest(bytes), client: 'ip:10.0.0.1' }, bypass: 'request' });
    expect(planCache({ ...sync, directives: { noCache: false, noStore: true } })).to.deep.equal({
      facts: undefined,
      bypass: 'request',
    });
  });

  it('keys a version and an answer spec apart', () => {
    const image = imageDigest(bytes);
    const keys = new Set([
      cacheEntryKey('digits', servedAs, image),
      cacheEntryKey('digits', { ...servedAs, version: 'v2' }, image),
      cacheEntryKey('digits', { ...servedAs, spec: 'other' }, image),
      cacheEntryKey('other', servedAs, image),
    ]);
    expect(keys.size).to.equal(4);
  });

  it('writes Cache-Status as RFC 9211 does', () => {
    expect(cacheStatus({ kind: 'hit' })).to.equal('conveyor; hit');
    expect(cacheStatus({ kind: 'collapsed' })).to.equal('conveyor; fwd=miss; collapsed');
    expect(cacheStatus({ kind: 'bypass', reason: 'request' })).to.equal('conveyor; fwd=request');
    expect(cacheStatus({ kind: 'bypass', reason: 'versions' })).to.equal('conveyor; fwd=bypass; detail=versions');
  });
});
