import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { findings } from '../scripts/import-graph.js';

// Every package's import structure, read from the code (scripts/import-graph.ts): no file imports
// itself back through others, and no folder imports one that imports it (an upward import).
const PACKAGES = [
  'services/gateway/src',
  'services/inference-worker/src',
  'services/monitor/src',
  'services/trainer/src',
  'shared/src',
  'clients/typescript/src',
];

describe('import structure', () => {
  it('has no import circle and no upward import in any package', () => {
    const { circles, upward } = findings(PACKAGES);
    expect(circles, 'import circles').to.deep.equal([]);
    expect(upward, 'imports between folders that import each other').to.deep.equal([]);
  });

  it('finds a circle through two folders, and both imports that close it', () => {
    const root = mkdtempSync(join(tmpdir(), 'import-graph-'));
    try {
      mkdirSync(join(root, 'src/http'), { recursive: true });
      mkdirSync(join(root, 'src/jobs'), { recursive: true });
      writeFileSync(join(root, 'src/http/context.ts'), "import type { Place } from '../jobs/admission.js';\n");
      writeFileSync(join(root, 'src/jobs/admission.ts'), "import type { Ctx } from '../http/context.js';\n");
      writeFileSync(join(root, 'src/jobs/fine.ts'), "import { x } from './admission.js';\n");
      const { circles, upward } = findings(['src'], root);
      expect(circles).to.deep.equal([['src/http/context.ts', 'src/jobs/admission.ts']]);
      expect(upward).to.have.length(2);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
