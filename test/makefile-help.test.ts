import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

describe('make help', () => {
  it('lists every target the Makefile declares (names with digits included)', () => {
    const declared = [...readFileSync('Makefile', 'utf8').matchAll(/^\.PHONY: (\S+)/gm)].map((m) => m[1]);
    const listed = execFileSync('make', ['--no-print-directory', 'help'], { encoding: 'utf8' })
      // eslint-disable-next-line no-control-regex -- the help output is coloured with ANSI escapes
      .replace(/\x1b\[[0-9;]*m/g, '')
      .split('\n')
      .map((line) => line.trim().split(/\s+/)[0])
      .filter(Boolean);
    expect(declared).to.include('k8s-validate');
    expect([...listed].sort()).to.deep.equal([...declared].sort());
  });
});
