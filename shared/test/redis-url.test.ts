import { expect } from 'chai';
import { z } from 'zod';
import { checkRedisConfig, loadConfig, redisConfigShape } from '../src/config.js';
import { hashTag, parseRedisUrl } from '../src/redis.js';

describe('REDIS_URL forms', () => {
  it('reads a single server as a plain URL', () => {
    expect(parseRedisUrl('redis://:pw@127.0.0.1:6379/2')).to.deep.equal({
      kind: 'standalone',
      url: 'redis://:pw@127.0.0.1:6379/2',
    });
  });

  it('reads a cluster from its seed nodes, with credentials and TLS', () => {
    expect(parseRedisUrl('rediss+cluster://app:p%40ss@10.0.0.1:7000,[::1]:7001,redis-2.svc:7002')).to.deep.equal({
      kind: 'cluster',
      nodes: [
        { host: '10.0.0.1', port: 7000 },
        { host: '::1', port: 7001 },
        { host: 'redis-2.svc', port: 7002 },
      ],
      username: 'app',
      password: 'p@ss',
      tls: true,
    });
  });

  it('reads Sentinels, the master name, a database and a separate Sentinel password', () => {
    expect(parseRedisUrl('redis+sentinel://:secret@s1:26379,s2:26379,s3:26379/mymaster/3?sentinelPassword=other')).to.deep.equal({
      kind: 'sentinel',
      sentinels: [
        { host: 's1', port: 26379 },
        { host: 's2', port: 26379 },
        { host: 's3', port: 26379 },
      ],
      name: 'mymaster',
      password: 'secret',
      sentinelPassword: 'other',
      db: 3,
      tls: false,
    });
    // The master's password goes to the Sentinels too unless told otherwise.
    expect(parseRedisUrl('redis+sentinel://:secret@s1:26379/m')).to.include({ sentinelPassword: 'secret', db: 0 });
  });

  for (const [url, message] of [
    ['http://x:1', /redis:\/\//],
    ['redis+cluster://host', /not host:port/],
    ['redis+cluster://h:1,h:99999', /not host:port/],
    ['redis+cluster://h:1/2', /no path/],
    ['redis+sentinel://h:26379', /master name/],
    ['redis+sentinel://h:26379/m/x', /database number/],
  ] as const) {
    it(`refuses ${url}`, () => expect(() => parseRedisUrl(url)).to.throw(message));
  }

  it('finds the hash tag of a prefix as Redis Cluster does', () => {
    expect(hashTag('{conveyor}')).to.equal('conveyor');
    expect(hashTag('conveyor')).to.equal(undefined);
    expect(hashTag('{}x')).to.equal(undefined);
  });

  describe('in the configuration', () => {
    const Schema = z.object(redisConfigShape).superRefine(checkRedisConfig);
    it('needs a hash-tag prefix on a cluster, and says which', () => {
      expect(() => loadConfig(Schema, { REDIS_URL: 'redis+cluster://a:1,b:2' })).to.throw(/REDIS_PREFIX.*\{conveyor\}/);
      expect(loadConfig(Schema, { REDIS_URL: 'redis+cluster://a:1,b:2', REDIS_PREFIX: '{conveyor}' }).REDIS_PREFIX).to.equal(
        '{conveyor}',
      );
    });
    it('takes a hash-tag prefix on one server too, and refuses an unbalanced one', () => {
      expect(loadConfig(Schema, { REDIS_PREFIX: '{conveyor}' }).REDIS_PREFIX).to.equal('{conveyor}');
      expect(() => loadConfig(Schema, { REDIS_PREFIX: '{conveyor' })).to.throw(/REDIS_PREFIX/);
    });
    it('reports a malformed Sentinel URL at start-up', () => {
      expect(() => loadConfig(Schema, { REDIS_URL: 'redis+sentinel://s1:26379' })).to.throw(/REDIS_URL.*master name/);
    });
  });
});
