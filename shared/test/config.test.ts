import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { z } from 'zod';
import {
  checkMlflowAuth,
  ConfigError,
  env,
  loadConfig,
  mlflowAuthShape,
  mlflowCredentials,
  redisConfigShape,
} from '../src/config.js';

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
    expect(message).to.contain(
      'REDIS_URL ("http://x"): must be a redis://, rediss://, redis+cluster:// or redis+sentinel:// URL',
    );
  });

  it('never prints a secret that fails validation, nor the password in a URL', () => {
    const Secrets = z.object({ ...redisConfigShape, DASHBOARD_PASSWORD: z.string().min(12) });
    const message = (() => {
      try {
        loadConfig(Secrets, { DASHBOARD_PASSWORD: 'hunter2', REDIS_URL: 'http://:s3cret@x' });
      } catch (e) {
        return (e as Error).message;
      }
      return '';
    })();
    expect(message).to.contain('DASHBOARD_PASSWORD (set, not shown)');
    expect(message).to.contain('REDIS_URL ("http://:***@x")');
    expect(message).not.to.match(/hunter2|s3cret/);
  });

  describe('MLflow credentials', () => {
    const Mlflow = z.object({ MLFLOW_TRACKING_URI: z.url().optional(), ...mlflowAuthShape }).superRefine(checkMlflowAuth);
    let dir: string;
    before(() => {
      dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-config-'));
    });
    after(() => rmSync(dir, { recursive: true, force: true }));

    const problems = (values: Record<string, string>) => {
      try {
        loadConfig(Mlflow, values);
        return '';
      } catch (e) {
        expect(e).to.be.instanceOf(ConfigError);
        return (e as Error).message;
      }
    };

    it('reads the password from its file (a trailing newline is not part of it), or from the variable', () => {
      const file = path.join(dir, 'reader.password');
      writeFileSync(file, 'correct horse battery\n');
      const fromFile = loadConfig(Mlflow, { MLFLOW_TRACKING_USERNAME: 'reader', MLFLOW_TRACKING_PASSWORD_FILE: file });
      expect(mlflowCredentials(fromFile)).to.deep.equal({ username: 'reader', password: 'correct horse battery' });
      const fromVariable = loadConfig(Mlflow, { MLFLOW_TRACKING_USERNAME: 'admin', MLFLOW_TRACKING_PASSWORD: 'p w' });
      expect(mlflowCredentials(fromVariable)).to.deep.equal({ username: 'admin', password: 'p w' });
      expect(mlflowCredentials(loadConfig(Mlflow, {}))).to.equal(undefined);
    });

    it('refuses half or doubly configured credentials, unreadable or empty files, and credentials in the URL', () => {
      const empty = path.join(dir, 'empty.password');
      writeFileSync(empty, '\n');
      expect(problems({ MLFLOW_TRACKING_USERNAME: 'reader' })).to.contain(
        'MLFLOW_TRACKING_USERNAME ("reader"): needs MLFLOW_TRACKING_PASSWORD_FILE',
      );
      expect(problems({ MLFLOW_TRACKING_PASSWORD: 'secret-value' })).to.contain('a password is configured but no user');
      expect(
        problems({
          MLFLOW_TRACKING_USERNAME: 'r',
          MLFLOW_TRACKING_PASSWORD: 'secret-value',
          MLFLOW_TRACKING_PASSWORD_FILE: empty,
        }),
      ).to.contain('not both');
      expect(problems({ MLFLOW_TRACKING_USERNAME: 'r', MLFLOW_TRACKING_PASSWORD_FILE: empty })).to.contain(
        'cannot read the password: the file is empty',
      );
      expect(problems({ MLFLOW_TRACKING_USERNAME: 'r', MLFLOW_TRACKING_PASSWORD_FILE: path.join(dir, 'missing') })).to.contain(
        'cannot read the password: ENOENT',
      );
      const inUrl = problems({ MLFLOW_TRACKING_URI: 'http://admin:secret-value@mlflow:5000' });
      expect(inUrl).to.contain('no credentials in the URL');
      expect(inUrl).not.to.contain('secret-value');
    });
  });
});
