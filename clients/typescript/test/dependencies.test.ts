import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';

const CLIENT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SHARED = path.resolve(CLIENT, '../../shared/src');

/** The module specifiers a TypeScript file imports or re-exports (static and dynamic). */
function specifiers(file: string): string[] {
  const source = readFileSync(file, 'utf8');
  const found = [...source.matchAll(/(?:^|\n)\s*(?:import|export)\s[^'";]*?from\s+'([^']+)'|import\(\s*'([^']+)'\s*\)/g)];
  return found.map((m) => (m[1] ?? m[2])!);
}

/** A specifier as a source file of the repository, or undefined for a package or a Node module. */
function resolveSource(from: string, specifier: string): string | undefined {
  if (specifier.startsWith('.')) return path.resolve(path.dirname(from), specifier).replace(/\.js$/, '.ts');
  const shared = /^@conveyor\/shared\/(.+)$/.exec(specifier);
  return shared ? path.join(SHARED, `${shared[1]!}.ts`) : undefined;
}

/** Every repository file the client's sources reach, and every package or Node module they import on the way. */
function importGraph(entries: string[]): { files: Set<string>; external: Set<string> } {
  const files = new Set<string>();
  const external = new Set<string>();
  const visit = (file: string) => {
    if (files.has(file)) return;
    files.add(file);
    for (const specifier of specifiers(file)) {
      const next = resolveSource(file, specifier);
      if (next) visit(next);
      else external.add(specifier);
    }
  };
  entries.forEach(visit);
  return { files, external };
}

/**
 * What a user of the CLI installs: the client depends on zod and the contract only, not on what the
 * services need (sharp, onnxruntime-node, ioredis, bullmq). The contract's schemas are bundled into
 * the client's build, so zod is its only runtime dependency.
 */
describe('the TypeScript client depends on zod and the contract only', () => {
  const manifest = JSON.parse(readFileSync(path.join(CLIENT, 'package.json'), 'utf8')) as {
    name: string;
    bin: Record<string, string>;
    dependencies?: Record<string, string>;
    peerDependencies?: Record<string, string>;
    optionalDependencies?: Record<string, string>;
  };
  const sources = readdirSync(path.join(CLIENT, 'src'))
    .filter((name) => name.endsWith('.ts'))
    .map((name) => path.join(CLIENT, 'src', name));

  it('is its own package, with the conveyor command and zod as its only runtime dependency', () => {
    expect(manifest.name).to.equal('@conveyor/client');
    expect(manifest.bin).to.deep.equal({ conveyor: './dist/cli.js' });
    expect(Object.keys(manifest.dependencies ?? {})).to.deep.equal(['zod']);
    expect(manifest.peerDependencies ?? {}).to.deep.equal({});
    expect(manifest.optionalDependencies ?? {}).to.deep.equal({});
  });

  it('reaches only the contract in shared/, and imports nothing but zod and Node modules', () => {
    const { files, external } = importGraph(sources);
    const fromShared = [...files].filter((file) => file.startsWith(SHARED + path.sep)).map((file) => path.relative(SHARED, file));
    expect(fromShared).to.include('contract/api.contract.ts');
    for (const file of fromShared) expect(file, file).to.match(/^(contract\/[a-z-]+\.contract|problem)\.ts$/);
    for (const specifier of external) expect(specifier, specifier).to.match(/^(zod|node:.+)$/);
  });
});
