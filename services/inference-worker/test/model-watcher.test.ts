import { expect } from 'chai';
import pino from 'pino';
import { MlflowAuthError, MlflowError } from '@conveyor/shared/mlflow/client';
import type { ModelHost } from '../src/model/model-host.js';
import { ModelWatcher } from '../src/model/model-watcher.js';
import type { RegistrySource } from '../src/model/registry-source.js';

/** A registry that always fails with `error`, and says whether the cached version was asked for. */
function failingSource(error: Error) {
  const calls = { resolve: 0, lastKnown: 0 };
  const source = {
    resolve: () => {
      calls.resolve++;
      return Promise.reject(error);
    },
    lastKnown: () => {
      calls.lastKnown++;
      return Promise.resolve({ name: 'digits', version: '1' });
    },
  };
  return { source: source as unknown as RegistrySource, calls };
}

/** The log lines at warn and above, as level + message. */
function recordingLog() {
  const lines: string[] = [];
  const log = pino({ level: 'warn' }, { write: (line: string) => void lines.push(line) });
  const seen = () => lines.map((l) => JSON.parse(l) as { level: number; msg: string }).map((r) => `${r.level} ${r.msg}`);
  return { log, seen };
}

describe('model watcher: refused credentials', () => {
  const host = { loaded: false } as unknown as ModelHost;
  const refused = new MlflowAuthError('MLflow refused the credentials of user "reader" (401 to GET /x)', 401, 'UNAUTHENTICATED');

  it('fails the start at once instead of falling back to the cached version or retrying', async () => {
    const { source, calls } = failingSource(refused);
    const watcher = new ModelWatcher(source, host, { intervalMs: 10 }, pino({ level: 'silent' }));
    const error = await watcher.start().catch((e: unknown) => e);
    expect(error).to.equal(refused);
    expect(calls).to.deep.equal({ resolve: 1, lastKnown: 0 });
  });

  it('while serving, logs a refusal once as an error (not a warning per poll), and other failures as before', async () => {
    const { log, seen } = recordingLog();
    const watcher = new ModelWatcher(failingSource(refused).source, host, { intervalMs: 10 }, log);
    await watcher.poll();
    await watcher.poll();
    await watcher.poll();
    expect(seen()).to.deep.equal([
      '50 MLflow refused the credentials; still serving the current model, not following the alias until they are accepted',
    ]);
    const down = new ModelWatcher(
      failingSource(new MlflowError('unreachable', 0, 'UNREACHABLE')).source,
      host,
      { intervalMs: 10 },
      log,
    );
    await down.poll();
    expect(seen().at(-1)).to.equal('40 model check failed; still serving the current model');
  });
});
