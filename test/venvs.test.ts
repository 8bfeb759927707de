import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { ROOT } from '../harness/service-process.js';

/**
 * The pinned Python environments: one installer (harness/venv.sh), one folder of requirements. Every
 * environment the script knows has its requirements and a lock in requirements/, every file there
 * belongs to one, and a lock pins every package to one exact version (nothing unpinned is installed).
 */
describe('pinned Python environments', () => {
  const dir = path.join(ROOT, 'requirements');
  const listed = spawnSync('bash', [path.join(ROOT, 'harness/venv.sh'), '--list'], { encoding: 'utf8' })
    .stdout.trim()
    .split('\n')
    .map((line) => line.split(/\s+/)[0]!);

  it('are the ones in requirements/, each with its requirements and its lock', () => {
    const files = readdirSync(dir).sort();
    const names = [...new Set(files.map((f) => f.replace(/\.(in|lock\.txt)$/, '')))].sort();
    expect(listed.slice().sort()).to.deep.equal(names);
    for (const name of names) expect(files, name).to.include.members([`${name}.in`, `${name}.lock.txt`]);
  });

  it('pin every package of every lock to an exact version', () => {
    for (const name of listed) {
      const lines = readFileSync(path.join(dir, `${name}.lock.txt`), 'utf8')
        .split('\n')
        .filter((line) => line.trim() !== '' && !line.startsWith('#'));
      expect(lines.length, name).to.be.greaterThan(0);
      // name==version, nothing else: no ranges, no URLs, no editable installs.
      for (const line of lines) expect(line, `${name}.lock.txt`).to.match(/^[\w.-]+==[\w.+!-]+$/);
    }
  });

  it('refuses a name it does not know, saying how to list them', () => {
    const run = spawnSync('bash', [path.join(ROOT, 'harness/venv.sh'), 'no-such-env'], { encoding: 'utf8' });
    expect(run.status).to.equal(2);
    expect(run.stderr).to.contain('harness/venv.sh --list');
  });
});
