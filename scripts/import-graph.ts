/**
 * The import structure of each package's `src/`, read from the code with TypeScript's own parser:
 * file-level import circles, and imports that run upward.
 *
 * "Upward" is judged on a package's folders: every folder under `src/` is one unit, and every file
 * directly in `src/` (the entry points and the service's wiring) is a unit of its own. An import
 * from one unit to another is upward when it closes a circle between units: `http/` importing
 * `access/` while `access/` imports `http/`, or `model/` importing `inference.processor.ts`, which
 * imports `model/`. The units of a package must form a one-way graph, so each folder is a floor
 * that knows only the floors below it.
 *
 * `npx tsx scripts/import-graph.ts` prints the findings (exit 1 if any); test/structure.test.ts
 * keeps them at zero.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

export const PACKAGES = [
  'shared/src',
  'services/gateway/src',
  'services/inference-worker/src',
  'services/monitor/src',
  'services/trainer/src',
];

export interface Findings {
  /** Each circle of files, as the list of files around it (relative to the repository). */
  readonly circles: readonly (readonly string[])[];
  /** Each import between units that closes a circle of units: `from → to (unit → unit)`. */
  readonly upward: readonly string[];
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(path);
    return entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts') ? [path] : [];
  });
}

/** The package's own files each file imports (relative specifiers only; `import type` included). */
function importsOf(file: string, known: ReadonlySet<string>): string[] {
  const info = ts.preProcessFile(readFileSync(file, 'utf8'), true, true);
  return info.importedFiles
    .map((ref) => ref.fileName)
    .filter((spec) => spec.startsWith('.'))
    .map((spec) => resolve(dirname(file), spec.replace(/\.js$/, '.ts')))
    .filter((target) => known.has(target));
}

function unitOf(src: string, file: string): string {
  const rel = relative(src, file);
  const [first] = rel.split(sep);
  return rel.includes(sep) ? `${first!}/` : rel;
}

/** Strongly connected components with more than one member (or a self-loop), by Tarjan's algorithm. */
function circlesOf(graph: ReadonlyMap<string, ReadonlySet<string>>): string[][] {
  let index = 0;
  const order = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (node: string): void => {
    order.set(node, index);
    low.set(node, index);
    index++;
    stack.push(node);
    onStack.add(node);
    for (const next of graph.get(node) ?? []) {
      if (!order.has(next)) {
        visit(next);
        low.set(node, Math.min(low.get(node)!, low.get(next)!));
      } else if (onStack.has(next)) {
        low.set(node, Math.min(low.get(node)!, order.get(next)!));
      }
    }
    if (low.get(node) !== order.get(node)) return;
    const component: string[] = [];
    let member: string;
    do {
      member = stack.pop()!;
      onStack.delete(member);
      component.push(member);
    } while (member !== node);
    if (component.length > 1 || graph.get(node)?.has(node)) found.push(component.sort());
  };
  for (const node of graph.keys()) if (!order.has(node)) visit(node);
  return found;
}

export function findings(packages: readonly string[] = PACKAGES, root = ROOT): Findings {
  const circles: string[][] = [];
  const upward: string[] = [];
  for (const pkg of packages) {
    const src = join(root, pkg);
    const files = sourceFiles(src);
    const known = new Set(files);
    const fileGraph = new Map<string, Set<string>>();
    const unitGraph = new Map<string, Set<string>>();
    const edges: [string, string][] = [];
    for (const file of files) {
      const targets = importsOf(file, known);
      fileGraph.set(file, new Set(targets));
      const from = unitOf(src, file);
      if (!unitGraph.has(from)) unitGraph.set(from, new Set());
      for (const target of targets) {
        const to = unitOf(src, target);
        if (to === from) continue;
        unitGraph.get(from)!.add(to);
        edges.push([file, target]);
      }
    }
    for (const circle of circlesOf(fileGraph)) circles.push(circle.map((f) => relative(root, f)));
    for (const units of circlesOf(unitGraph)) {
      const inCircle = new Set(units);
      for (const [file, target] of edges) {
        const from = unitOf(src, file);
        const to = unitOf(src, target);
        if (inCircle.has(from) && inCircle.has(to)) {
          upward.push(`${relative(root, file)} → ${relative(root, target)} (${from} → ${to})`);
        }
      }
    }
  }
  return { circles, upward };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { circles, upward } = findings();
  for (const circle of circles) console.log(`circle: ${circle.join(' → ')}`);
  for (const line of upward) console.log(`between units in a circle: ${line}`);
  console.log(`${circles.length} import circles, ${upward.length} imports between units that form a circle`);
  process.exitCode = circles.length + upward.length > 0 ? 1 : 0;
}
