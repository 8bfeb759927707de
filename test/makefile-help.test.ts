import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

describe('make help', () => {
  const makefile = readFileSync('Makefile', 'utf8');
  // Every rule's target (a `name:` line that is not a variable assignment), and every .PHONY name.
  const rules = [...makefile.matchAll(/^([a-zA-Z0-9_-]+):(?!.*:=)/gm)].map((m) => m[1]!);
  const phony = [...makefile.matchAll(/^\.PHONY: (\S+)/gm)].map((m) => m[1]!);
  const help = execFileSync('make', ['--no-print-directory', 'help'], { encoding: 'utf8' })
    // eslint-disable-next-line no-control-regex -- the help output is coloured with ANSI escapes
    .replace(/\x1b\[[0-9;]*m/g, '');

  /** Section title → the targets listed under it, in the order printed. */
  const sections = new Map<string, string[]>();
  let current: string[] | undefined;
  for (const line of help.split('\n')) {
    if (!line.trim()) continue;
    if (!line.startsWith(' ')) sections.set(line.trim(), (current = []));
    else current?.push(line.trim().split(/\s+/)[0]!);
  }
  const listed = [...sections.values()].flat();

  it('lists every target the Makefile declares, once (names with digits included)', () => {
    expect(phony).to.include('k8s-validate');
    expect(new Set(rules)).to.deep.equal(new Set(phony));
    expect([...listed].sort()).to.deep.equal([...new Set(rules)].sort());
  });

  it('prints the targets under the sections the Makefile declares, in its order', () => {
    const declared = [...makefile.matchAll(/^##@ (.+)$/gm)].map((m) => m[1]!);
    expect(declared.length).to.be.greaterThan(3);
    expect([...sections.keys()]).to.deep.equal(declared);
    // No target printed before the first section.
    expect(help.trim().split('\n')[0]).to.equal(declared[0]);
    for (const [title, targets] of sections) expect(targets, title).to.not.be.empty;
  });
});
