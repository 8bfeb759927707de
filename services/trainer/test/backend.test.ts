import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';

const backend = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'nn', 'backend.ts');

describe('the tfjs wasm backend', function () {
  this.timeout(60_000);

  // In a fresh process: in this one another suite may have started the backend already.
  it('leaves no process-wide error handlers behind once started (emscripten adds rethrowing ones)', () => {
    const script = `
      const { useWasmBackend } = await import(${JSON.stringify(backend)});
      const count = () => process.listenerCount('uncaughtException') + process.listenerCount('unhandledRejection');
      const before = count();
      await useWasmBackend();
      console.log(JSON.stringify({ before, after: count() }));`;
    const run = spawnSync(
      process.execPath,
      ['--conditions=conveyor-source', '--import', 'tsx', '--input-type=module', '-e', script],
      {
        encoding: 'utf8',
      },
    );
    expect(run.status, run.stderr).to.equal(0);
    expect(JSON.parse(run.stdout.trim())).to.deep.equal({ before: 0, after: 0 });
  });
});
