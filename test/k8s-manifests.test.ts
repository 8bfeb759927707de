import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { ROOT } from '../harness/service-process.js';
import { venvBin } from '../harness/venv.js';

/**
 * `make k8s-validate` passes on the committed manifests and fails on broken ones: the check can
 * fail, and says where. Renders both overlays with the pinned kustomize (built on first use, as in
 * `make lint`), then feeds the validator copies of the dev render with one fault each.
 */
describe('Kubernetes manifests (scripts/k8s/validate.sh)', function () {
  this.timeout(600_000); // a first run builds kustomize (about a minute) and the venv
  let dir: string;
  let rendered: string;
  let python: string;

  before(() => {
    const run = spawnSync('bash', ['scripts/k8s/validate.sh'], { cwd: ROOT, encoding: 'utf8' });
    expect(run.status, `${run.stdout}\n${run.stderr}`).to.equal(0);
    expect(run.stdout).to.match(/dev\.yaml: .*valid for Kubernetes 1\.37\.0 and KEDA v2\.20\.2/);
    expect(run.stdout).to.match(/prod\.yaml: .*valid for Kubernetes 1\.37\.0 and KEDA v2\.20\.2/);
    rendered = readFileSync(path.join(ROOT, 'data/k8s/dev.yaml'), 'utf8');
    python = venvBin('k8s', 'python');
    dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-k8s-'));
  });

  after(() => rmSync(dir, { recursive: true, force: true }));

  function validate(yaml: string, extra: string[] = []): { status: number | null; output: string } {
    const file = path.join(dir, 'manifests.yaml');
    writeFileSync(file, yaml);
    const run = spawnSync(
      python,
      [
        'scripts/k8s/validate.py',
        '--kubernetes',
        '1.37.0',
        '--keda-schema',
        'deploy/k8s/schemas/keda-scaledobject.json',
        ...extra,
        file,
      ],
      { cwd: ROOT, encoding: 'utf8' },
    );
    return { status: run.status, output: `${run.stdout}${run.stderr}` };
  }

  it('renders every part: per-model workers with their ScaledObjects, the gateway HPA, PDBs', () => {
    for (const name of ['conveyor-gateway', 'conveyor-worker-digits', 'conveyor-worker-moderation', 'conveyor-monitor'])
      expect(rendered).to.include(`name: ${name}\n`);
    expect(rendered.match(/^kind: ScaledObject$/gm)).to.have.length(2);
    expect(rendered).to.include('conveyor_worker_jobs_in_flight{model="moderation"}');
    expect(validate(rendered).status).to.equal(0);
  });

  for (const [fault, from, to, message] of [
    ['a misspelt ScaledObject field', 'cooldownPeriod: 300', 'coolDownPeriod: 300', /'coolDownPeriod' was unexpected/],
    ['a wrong type in a built-in object', 'maxReplicas: 2', 'maxReplicas: "two"', /maxReplicas: 'two' is not of type 'integer'/],
    [
      'a writable root filesystem',
      'readOnlyRootFilesystem: true',
      'readOnlyRootFilesystem: false',
      /readOnlyRootFilesystem must be true/,
    ],
    [
      'a grace period shorter than the drain',
      'terminationGracePeriodSeconds: 30',
      'terminationGracePeriodSeconds: 12',
      /must exceed the drain/,
    ],
    ['a missing memory limit', '            memory: 512Mi\n', '', /resources\.limits\.memory missing/],
  ] as const) {
    it(`fails on ${fault}`, () => {
      expect(rendered, 'the fault can be made').to.include(from);
      const result = validate(rendered.replace(from, to));
      expect(result.status, result.output).to.equal(1);
      expect(result.output).to.match(message);
    });
  }

  it('fails on a Secret that is neither rendered nor declared external (prod without --external-secret)', () => {
    const prod = readFileSync(path.join(ROOT, 'data/k8s/prod.yaml'), 'utf8');
    expect(validate(prod, ['--external-secret', 'conveyor-secrets']).status).to.equal(0);
    const result = validate(prod);
    expect(result.status).to.equal(1);
    expect(result.output).to.match(/Secret conveyor-secrets \(key REDIS_URL\) is neither rendered nor declared external/);
  });
});
