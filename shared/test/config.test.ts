import { expect } from 'chai';
import { z } from 'zod';
import { ConfigError, env, loadConfig, redisConfigShape } from '../src/config.js';

describe('config', () => {
  const Schema = z.object({
    ...redisConfigShape,
    PORT: env.int(8080, 0, 65535, 'port'),
    DEBUG: env.bool(false, 'debug'),
    CIDRS: env.list('', 'allow-list'),
  });

  it('applies defaults and coerces strings', () => {
    const config = loadConfig(Schema, { PORT: '9000', DEBUG: 'yes', CIDRS: '127.0.0.1/32, 10.0.0.0/8,' });
    expect(config).to.deep.equal({
      REDIS_URL: 'redis://127.0.0.1:6379',
      REDIS_PREFIX: 'conveyor',
      PORT: 9000,
      DEBUG: true,
      CIDRS: ['127.0.0.1/32', '10.0.0.0/8'],
    });
    expect(loadConfig(Schema, {}).DEBUG).to.equal(false);
    expect(loadConfig(Schema, {}).CIDRS).to.deep.equal([]);
  });

  it('fails once, naming every bad key and its value', () => {
    let error: unknown;
    try {
      loadConfig(Schema, { PORT: '70000', DEBUG: 'maybe', REDIS_URL: 'http://x' });
    } catch (e) {
      error = e;
    }
    expect(error).to.be.instanceOf(ConfigError);
    const message = (error as Error).message;
    expect(message).to.contain('PORT ("70000")');
    expect(message).to.contain('DEBUG ("maybe")');
    expect(message).to.contain('REDIS_URL ("http://x"): must be a redis:// or rediss:// URL');
  });
});
