import { spawnSync } from 'node:child_process';
import { expect } from 'chai';
import { z } from 'zod';
import { checkRedisConfig, ConfigError, loadConfig, redisConfigShape } from '../src/config.js';
import { parseRedisUrl } from '../src/redis.js';

/**
 * A malformed REDIS_URL is reported at start-up, and the report goes to terminals and log
 * collectors: it must say what is wrong without the password. Each form below was printed whole
 * (password included) by the release before this test: the multi-host forms and the bad ports are
 * not WHATWG URLs, so the old redaction, which needed one, let them through.
 */
const PASSWORD = 'Hunter2-s3cr3t';
const SENTINEL_PASSWORD = 'Sentinel-Pa55';

const malformed: readonly string[] = [
  `redis://:${PASSWORD}@127.0.0.1:99999`,
  `redis://app:${PASSWORD}@host:port`,
  `rediss://:${PASSWORD}@[::1:6379/0`,
  `redis+sentinel://:${PASSWORD}@s1:26379,s2:26379`,
  `redis+sentinel://app:${PASSWORD}@s1:26379,s2:0/mymaster?sentinelPassword=${SENTINEL_PASSWORD}`,
  `redis+sentinel://:${PASSWORD}@s1:26379,s2:26379/my master/x?sentinelPassword=${SENTINEL_PASSWORD}`,
  `redis+cluster://:${PASSWORD}@a:7000,b:700000`,
  `redis+cluster://app:${PASSWORD}@a:7000,b/2`,
  `rediss+cluster://:${PASSWORD}?x@a:7000`,
  `redis+sentinel://:pa?ss${PASSWORD}@s1:26379/m`,
  `redis+cluster://:${PASSWORD}@a:7000/ b:7001`,
  `http://:${PASSWORD}@host:1`,
  `:${PASSWORD}@host:6379`,
  `redis:// :${PASSWORD}@ garbage`,
];

const Schema = z.object(redisConfigShape).superRefine(checkRedisConfig);

function configMessage(url: string): string {
  try {
    loadConfig(Schema, { REDIS_URL: url });
  } catch (error) {
    expect(error).to.be.instanceOf(ConfigError);
    return (error as Error).message;
  }
  throw new Error(`${url.length}-character REDIS_URL was accepted`);
}

describe('REDIS_URL never prints its password', () => {
  for (const [i, url] of malformed.entries()) {
    it(`form ${i + 1}: ${url.replaceAll(PASSWORD, '<password>').replaceAll(SENTINEL_PASSWORD, '<sentinel password>')}`, () => {
      const message = configMessage(url);
      expect(message).to.match(/REDIS_URL/);
      expect(message).not.to.contain(PASSWORD);
      expect(message).not.to.contain(SENTINEL_PASSWORD);
      // What the parser itself throws (shown by anything that calls it later) is clean as well.
      let thrown = '';
      try {
        parseRedisUrl(url);
      } catch (error) {
        thrown = (error as Error).message;
      }
      expect(thrown).not.to.contain(PASSWORD);
      expect(thrown).not.to.contain(SENTINEL_PASSWORD);
    });
  }

  it('keeps the rest of the value readable, so the mistake can be found', () => {
    expect(configMessage(`redis+cluster://:${PASSWORD}@a:7000,b:700000`)).to.contain('"redis+cluster://:***@a:7000,b:700000"');
    expect(configMessage(`redis+sentinel://:${PASSWORD}@s1:26379,s2:26379`)).to.contain(
      'redis+sentinel://:***@s1:26379,s2:26379',
    );
  });

  it('is absent from what a service prints when it exits on a bad REDIS_URL', () => {
    const url = `redis+sentinel://app:${PASSWORD}@s1:26379,s2:0/mymaster?sentinelPassword=${SENTINEL_PASSWORD}`;
    const child = spawnSync(
      process.execPath,
      [
        '--conditions=conveyor-source',
        '--import=tsx',
        '-e',
        "const { loadConfigOrExit, redisConfigShape } = await import('@conveyor/shared/config'); const { z } = await import('zod'); loadConfigOrExit(z.object(redisConfigShape));",
      ],
      { env: { ...process.env, REDIS_URL: url }, encoding: 'utf8', input: '' },
    );
    expect(child.status, child.stderr).to.equal(78);
    expect(child.stderr).to.match(/REDIS_URL/);
    expect(child.stdout + child.stderr).not.to.contain(PASSWORD);
    expect(child.stdout + child.stderr).not.to.contain(SENTINEL_PASSWORD);
  });
});
