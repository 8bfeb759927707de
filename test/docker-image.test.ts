import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { ROOT } from '../harness/service-process.js';

/**
 * The image's onnxruntime-node prune step (docker/prune-onnxruntime.sh, run by the Dockerfile with
 * BuildKit's TARGETARCH) keeps the Linux binding of the architecture being built and nothing else.
 * These tests run the script on a copy of the installed package's layout; they build no image. The
 * only image built and run is linux/amd64 (CI's `image` job), and the README claims no other.
 */
const PRUNE = path.join(ROOT, 'docker', 'prune-onnxruntime.sh');
const ORT_BIN = path.join(ROOT, 'node_modules', 'onnxruntime-node', 'bin');

/** Every file under dir, relative to it, sorted. */
function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => path.relative(dir, path.join(entry.parentPath, entry.name)))
    .sort();
}

describe('container image: onnxruntime-node bindings', () => {
  let tmp: string;
  let installed: string[];

  before(() => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'conveyor-prune-'));
    // The installed package's layout (napi-v*/{darwin,linux,win32}/{x64,arm64}/...), as npm ci
    // leaves it in the image; the script only moves names around, so empty files stand in for the
    // 290 MB of libraries.
    installed = filesUnder(ORT_BIN);
    expect(installed, 'onnxruntime-node is installed').to.include.members([
      'napi-v6/linux/x64/onnxruntime_binding.node',
      'napi-v6/linux/arm64/onnxruntime_binding.node',
    ]);
  });
  after(() => rmSync(tmp, { recursive: true, force: true }));

  const copyOfInstalled = (name: string): string => {
    const dir = path.join(tmp, name, 'bin');
    for (const file of installed) {
      mkdirSync(path.dirname(path.join(dir, file)), { recursive: true });
      writeFileSync(path.join(dir, file), '');
    }
    return dir;
  };

  for (const [targetArch, nodeArch] of [
    ['amd64', 'x64'],
    ['arm64', 'arm64'],
  ] as const) {
    it(`TARGETARCH=${targetArch} keeps linux/${nodeArch} and only that`, () => {
      const dir = copyOfInstalled(targetArch);
      const result = spawnSync('sh', [PRUNE, targetArch, dir], { encoding: 'utf8' });
      expect(result.status, result.stderr).to.equal(0);
      const kept = filesUnder(dir);
      const expected = installed.filter((f) => /^napi-v\d+\/linux\//.test(f) && f.split('/')[2] === nodeArch);
      expect(expected).to.include(`napi-v6/linux/${nodeArch}/onnxruntime_binding.node`);
      expect(kept).to.deep.equal(expected);
    });
  }

  it('refuses an architecture onnxruntime-node has no Linux binding for, and a tree without the binding', () => {
    const unknown = spawnSync('sh', [PRUNE, 'riscv64', copyOfInstalled('riscv64')], { encoding: 'utf8' });
    expect(unknown.status).to.equal(1);
    expect(unknown.stderr).to.include("no Linux binding for architecture 'riscv64'");
    const dir = copyOfInstalled('missing');
    rmSync(path.join(dir, 'napi-v6', 'linux', 'arm64'), { recursive: true });
    const missing = spawnSync('sh', [PRUNE, 'arm64', dir], { encoding: 'utf8' });
    expect(missing.status).to.equal(1);
    expect(missing.stderr).to.include('no linux/arm64 onnxruntime_binding.node');
  });

  it('is what the Dockerfile runs, with TARGETARCH, and no other onnxruntime deletion', () => {
    const dockerfile = readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8');
    const prodDeps = /^FROM \S+ AS prod-deps$([\s\S]*?)^FROM /m.exec(dockerfile)?.[1] ?? '';
    expect(prodDeps, 'prod-deps stage').to.match(/^ARG TARGETARCH$/m);
    expect(prodDeps).to.match(/^COPY docker\/prune-onnxruntime\.sh docker\/$/m);
    expect(prodDeps).to.include('sh docker/prune-onnxruntime.sh "$TARGETARCH" node_modules/onnxruntime-node/bin');
    expect(dockerfile).not.to.match(/rm -rf[^\n]*onnxruntime-node/);
  });
});

/**
 * The moderation-model stage converts the model with scripts/models/moderation.ts, which installs its
 * converters with `harness/venv.sh models`: that reads requirements/models.in and
 * requirements/models.lock.txt, so the stage must copy them (when the requirements moved into
 * requirements/, the stage did not follow, and every image build failed at this step).
 */
describe('container image: the moderation-model stage', () => {
  it('copies every file its conversion reads: the script, the venv script and the models environment', () => {
    const dockerfile = readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8');
    const stage = /^FROM \S+ AS moderation-model$([\s\S]*?)^FROM /m.exec(dockerfile)?.[1] ?? '';
    expect(stage, 'moderation-model stage').to.include('scripts/models/moderation.ts --build-only');
    // COPY <src>... <dest>: the sources are every word but the last.
    const sources = [...stage.matchAll(/^COPY (?!--from)(.+)$/gm)].flatMap((m) => m[1]!.trim().split(/\s+/).slice(0, -1));
    const copied = (file: string) => sources.some((src) => file === src || file.startsWith(`${src.replace(/\/$/, '')}/`));
    for (const file of [
      'scripts/models/moderation.ts',
      'harness/venv.sh',
      'harness/venv.ts',
      'requirements/models.in',
      'requirements/models.lock.txt',
      'models/moderation/manifest.json',
    ]) {
      expect(copied(file), `${file} is copied into the stage (sources: ${sources.join(' ')})`).to.equal(true);
    }
  });
});
