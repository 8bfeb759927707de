import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { SETTINGS, type Where } from '../scripts/config/deployment-settings.js';
import { CONFIG_PAGE, ENV_EXAMPLE, pageWithTables, renderEnvExample } from '../scripts/config-table.js';
import { ROOT } from '../harness/service-process.js';

const read = (file: string) => readFileSync(path.join(ROOT, file), 'utf8');
const keysOf = (...where: Where[]) => new Set(SETTINGS.filter((s) => s.where.some((w) => where.includes(w))).map((s) => s.key));
const sorted = (keys: Iterable<string>) => [...new Set(keys)].sort();

describe('Documentation', () => {
  it('the configuration page documents exactly the configuration the services accept (npm run docs:config regenerates it)', () => {
    const page = read(CONFIG_PAGE);
    expect(pageWithTables(page)).to.equal(page);
  });

  it('.env.example is what npm run docs:config writes from the compose settings', () => {
    expect(read(ENV_EXAMPLE)).to.equal(renderEnvExample());
  });

  it('documents every ${VAR} of the compose files, and no compose setting they do not read', () => {
    const files = [
      'docker-compose.yml',
      'docker-compose.public.yml',
      'docker-compose.orchestration.yml',
      'docker-compose.observability.yml',
    ];
    const used = files.flatMap((f) => [...read(f).matchAll(/\$\{([A-Z][A-Z0-9_]*)/g)].map((m) => m[1] ?? ''));
    expect(
      sorted(keysOf('compose', 'compose (public profile)', 'compose (orchestration)', 'compose (observability)')),
    ).to.deep.equal(sorted(used));
  });

  it('documents every variable make run reads itself', () => {
    const used = [...read('scripts/run.ts').matchAll(/process\.env\.([A-Z][A-Z0-9_]*)/g)].map((m) => m[1] ?? '');
    expect(sorted(keysOf('make run'))).to.deep.equal(sorted(used));
  });

  it('documents every variable the conveyor CLI reads', () => {
    const cli = ['shared/src/client/cli.ts', 'clients/typescript/src/cli.ts'].find((f) => existsSync(path.join(ROOT, f)));
    expect(cli, 'the CLI source').to.be.a('string');
    const used = [...read(cli ?? '').matchAll(/process\.env\.([A-Z][A-Z0-9_]*)/g)].map((m) => m[1] ?? '');
    expect(sorted(keysOf('CLI'))).to.deep.equal(sorted(used));
  });

  it('keeps the README a door to the docs: at most 15,000 characters, and every link in it leads somewhere', () => {
    const readme = read('README.md');
    expect(readme.length).to.be.at.most(15_000);
    const links = [...readme.matchAll(/\]\(([^)\s]+)\)/g)].map((m) => (m[1] ?? '').replace(/#.*$/, ''));
    const local = links.filter((l) => !/^[a-z]+:|^\.\.\//.test(l));
    expect(local.length).to.be.greaterThan(10);
    for (const link of local) expect(existsSync(path.join(ROOT, link)), link).to.equal(true);
  });
});
