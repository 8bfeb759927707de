import { spawn } from 'node:child_process';
import path from 'node:path';
import { expect } from 'chai';
import { ROOT } from '../../harness/service-process.js';

/**
 * Schemathesis, pinned (requirements/api-tests.in), with every check against a whole system of its
 * own in a network namespace with loopback only (scripts/api/fuzz.sh; the configuration, and why
 * any check is tuned, in test/api/schemathesis.toml): it finds nothing the document does not say.
 */
describe('OpenAPI: Schemathesis finds nothing beyond the document', function () {
  this.timeout(1_200_000);

  it('runs every check clean', async () => {
    const child = spawn('bash', [path.join(ROOT, 'scripts/api/fuzz.sh')], { cwd: ROOT, env: { ...process.env, NO_COLOR: '1' } });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    if (code !== 0) console.log(output);
    expect(code, 'schemathesis exit code').to.equal(0);
    expect(output).to.match(/No issues found|passed/);
  });
});
