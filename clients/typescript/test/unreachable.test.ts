import { execFile } from 'node:child_process';
import { createServer } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { expect } from 'chai';

const run = promisify(execFile);
const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/cli.ts');

/** A loopback port that nothing listens on: bound by the OS, then released. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

/** A gateway that does not answer: the CLI names the URL it tried and how to choose another (issue 21). */
describe('conveyor CLI without a gateway', function () {
  it('says which URL it could not reach, not only "fetch failed"', async function () {
    const url = `http://127.0.0.1:${await closedPort()}`;
    const outcome = await run(process.execPath, ['--conditions=conveyor-source', '--import', 'tsx', CLI, 'models'], {
      env: { ...process.env, CONVEYOR_URL: url },
    }).then(
      () => ({ code: 0, stderr: '' }),
      (error: unknown) => {
        const failed = error as { code?: number; stderr?: string };
        return { code: failed.code ?? -1, stderr: failed.stderr ?? '' };
      },
    );
    expect(outcome.code).to.equal(1);
    expect(outcome.stderr).to.include(`${url}/v1/models`);
    expect(outcome.stderr).to.include('ECONNREFUSED');
    expect(outcome.stderr).to.include('CONVEYOR_URL');
  });
});
