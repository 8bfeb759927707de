import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import vm from 'node:vm';
import { ROOT } from '../../harness/service-process.js';

/**
 * The npm package nsfwjs (MIT, Infinite Red), whose MobileNetV2 weights models/moderation is
 * converted from. It is fetched with `npm pack` (npm's own client and registry) and unpacked into
 * .tools/, not installed as a dependency: its package.json demands exactly Node 22.13.0
 * (`engines`), and with this project's `engine-strict=true` a dependency on it makes `npm ci` fail
 * on every other Node. The tarball is checked against the integrity recorded here, so a
 * republished or tampered package stops the build instead of silently changing the model.
 */
export const NSFWJS_VERSION = '4.4.0';
/** `npm view nsfwjs@4.4.0 dist.integrity`. */
const NSFWJS_INTEGRITY = 'sha512-krC1fgeTLXtZwgdpKJ0jm7hqv0gTSRQQRL+FhOaxaJ9Wj92t42BO3csO2odwgTAgZgf2RvkwPtp0R8Aa7dc+MA==';
const MODEL = 'mobilenet_v2';

export interface NsfwjsSource {
  /** The unpacked package (its `package.json`, `dist/`, `LICENSE`). */
  readonly packageDir: string;
  /** The MobileNetV2 model as a standard tfjs Layers folder: model.json + group1-shard1of1.bin. */
  readonly tfjsDir: string;
}

/** Fetches and unpacks nsfwjs once (about 10 MB); later calls reuse the copy. */
export function ensureNsfwjs(): NsfwjsSource {
  const home = path.join(ROOT, '.tools', `nsfwjs-${NSFWJS_VERSION}`);
  const source = { packageDir: path.join(home, 'package'), tfjsDir: path.join(home, 'tfjs', MODEL) };
  if (existsSync(path.join(home, '.complete'))) return source;

  console.error(`[nsfwjs] fetching nsfwjs@${NSFWJS_VERSION} with npm pack into ${path.relative(ROOT, home)}`);
  mkdirSync(path.dirname(home), { recursive: true });
  const tmp = mkdtempSync(`${home}.tmp-`);
  try {
    const pack = spawnSync('npm', ['pack', `nsfwjs@${NSFWJS_VERSION}`, '--ignore-scripts', '--json', '--pack-destination', tmp], {
      cwd: ROOT,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    if (pack.status !== 0) throw new Error(`npm pack nsfwjs@${NSFWJS_VERSION} failed (exit ${String(pack.status)})`);
    const [{ filename }] = JSON.parse(pack.stdout) as [{ filename: string }];
    const tarball = path.join(tmp, path.basename(filename));
    const integrity = `sha512-${createHash('sha512').update(readFileSync(tarball)).digest('base64')}`;
    if (integrity !== NSFWJS_INTEGRITY) {
      throw new Error(`nsfwjs-${NSFWJS_VERSION}.tgz has integrity ${integrity}, expected ${NSFWJS_INTEGRITY}`);
    }
    const untar = spawnSync('tar', ['-xzf', tarball, '-C', tmp], { stdio: 'inherit' });
    if (untar.status !== 0) throw new Error(`could not unpack ${tarball}`);
    writeTfjsFolder(path.join(tmp, 'package', 'dist', 'models', MODEL), path.join(tmp, 'tfjs', MODEL));
    rmSync(tarball);
    writeFileSync(path.join(tmp, '.complete'), `${NSFWJS_INTEGRITY}\n`);
    rmSync(home, { recursive: true, force: true });
    renameSync(tmp, home);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return source;
}

/**
 * nsfwjs ships each model as browserify bundles (`model.min.js` exporting the model.json object,
 * `group1-shardNofM.min.js` exporting that shard as base64) so bundlers can import them. This
 * writes them back out as the model.json + binary shards that every tfjs and converter tool
 * reads. The bundles are data wrapped in a UMD preamble; they are evaluated in an empty context
 * (no `require`, no `process`), with a time limit, only to take that data out.
 */
function writeTfjsFolder(bundles: string, out: string): void {
  const exported = (file: string): unknown => {
    const module = { exports: {} as unknown };
    vm.runInNewContext(readFileSync(path.join(bundles, file), 'utf8'), { module, exports: module.exports }, { timeout: 10_000 });
    return module.exports;
  };
  const model = exported('model.min.js') as {
    modelTopology: unknown;
    weightsManifest: { paths: string[]; weights: { name: string; shape: number[] }[] }[];
  };
  mkdirSync(out, { recursive: true });
  const weightsManifest = model.weightsManifest.map((group) => ({
    ...group,
    paths: group.paths.map((shard) => {
      const base64 = exported(`${shard}.min.js`);
      if (typeof base64 !== 'string') throw new Error(`${shard}.min.js does not export a base64 string`);
      writeFileSync(path.join(out, `${shard}.bin`), Buffer.from(base64, 'base64'));
      return `${shard}.bin`;
    }),
  }));
  const json = {
    format: 'layers-model',
    generatedBy: 'keras (nsfwjs model bundle)',
    convertedBy: `scripts/models/nsfwjs.ts from nsfwjs@${NSFWJS_VERSION}`,
    modelTopology: model.modelTopology,
    weightsManifest,
  };
  writeFileSync(path.join(out, 'model.json'), `${JSON.stringify(json)}\n`);
}
