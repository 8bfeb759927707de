import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ROOT } from '../../harness/service-process.js';
import { venvBin } from '../../harness/venv.js';
import { multipartBody, type ImageSet, type LoadtestModel } from './images.js';

/**
 * The load tests' tools: the pinned Python venv (Locust, the SLO checker, the plot), the pinned
 * vegeta, vegeta's targets for the image mix, and one attack at a fixed rate.
 */
function ensure(script: string, what: string): string {
  const result = spawnSync('bash', [path.join(ROOT, script)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  if (result.status !== 0) throw new Error(`could not install ${what} (${script} failed)`);
  return result.stdout.trim().split('\n').at(-1)!;
}

/** The venv's python (`.venv/loadtests`, created from requirements/loadtests.lock.txt on first use). */
export function ensurePython(): string {
  return venvBin('loadtests', 'python');
}

export function ensureVegeta(): string {
  return ensure('loadtests/ensure-vegeta.sh', 'vegeta');
}

/** Runs a command to its end with the output shown; resolves with its exit code. */
export function run(
  command: string,
  args: readonly string[],
  options: { env?: Record<string, string>; quiet?: boolean; onSpawn?: (child: ChildProcess) => void } = {},
) {
  return new Promise<number>((resolve, reject) => {
    const child = spawn(command, args, {
      cwd: ROOT,
      env: { ...process.env, ...options.env },
      stdio: ['ignore', options.quiet ? 'ignore' : 'inherit', 'inherit'],
    });
    options.onSpawn?.(child);
    child.once('error', reject);
    child.once('exit', (code, signal) => resolve(code ?? (signal ? 128 : 1)));
  });
}

/**
 * vegeta's targets in its HTTP format, one per request of one model's valid mix (on its own route:
 * a model's capacity is measured on its own): every image's multipart
 * body written beforehand to a file (`@file`), repeated by its weight and shuffled with a fixed seed,
 * so the heavy photos are spread over the round robin instead of arriving together. The image's name
 * rides in the query string (the gateway ignores it) to make a request's input visible in vegeta's results.
 */
export function writeTargets(set: ImageSet, gatewayUrl: string, dir: string, model: LoadtestModel = 'digits'): string {
  mkdirSync(dir, { recursive: true });
  const entries: string[] = [];
  for (const image of set.valid.filter((i) => i.model === model)) {
    const { body, type } = multipartBody(readFileSync(path.join(set.dir, image.file)), image.file, image.contentType);
    const bodyFile = path.join(dir, `${image.name}.multipart`);
    writeFileSync(bodyFile, body);
    const target = `POST ${gatewayUrl}${image.route}?image=${image.name}\nContent-Type: ${type}\n@${bodyFile}\n`;
    for (let i = 0; i < image.weight; i++) entries.push(target);
  }
  let seed = 7;
  for (let i = entries.length - 1; i > 0; i--) {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    const j = seed % (i + 1);
    [entries[i], entries[j]] = [entries[j]!, entries[i]!];
  }
  const file = path.join(dir, `targets-${model}.txt`);
  writeFileSync(file, entries.join('\n'));
  return file;
}

export interface Attack {
  /** vegeta's binary results. */
  readonly bin: string;
  /** `vegeta report -type=json`. */
  readonly report: string;
  /** `vegeta encode -to csv`: one line per request. */
  readonly results: string;
}

/**
 * `vegeta attack -rate=R -duration=D` (open model: requests leave at the rate whatever the answers),
 * then its JSON report and per-request CSV. The timeout is over the gateway's sync wait (10 s), so a
 * request the gateway answers 202 is seen as such, not cut short by the load generator.
 */
export async function attack(
  vegeta: string,
  targets: string,
  rate: number,
  seconds: number,
  prefix: string,
  onStart?: () => void,
): Promise<Attack> {
  const files = { bin: `${prefix}.bin`, report: `${prefix}.json`, results: `${prefix}.csv` };
  mkdirSync(path.dirname(prefix), { recursive: true });
  const args = [
    'attack',
    `-targets=${targets}`,
    `-rate=${rate}/s`,
    `-duration=${seconds}s`,
    '-timeout=20s',
    `-output=${files.bin}`,
  ];
  const started = new Promise<number>((resolve, reject) => {
    const child = spawn(vegeta, args, { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
    child.once('error', reject);
    child.once('spawn', () => onStart?.());
    child.once('exit', (code) => resolve(code ?? 1));
  });
  const code = await started;
  if (code !== 0) throw new Error(`vegeta attack exited with ${code}`);
  await pipeTo(vegeta, ['report', '-type=json', files.bin], files.report);
  await pipeTo(vegeta, ['encode', '-to=csv', files.bin], files.results);
  return files;
}

async function pipeTo(command: string, args: readonly string[], file: string): Promise<void> {
  const out = createWriteStream(file);
  const closed = new Promise<void>((resolve, reject) => {
    out.once('close', resolve);
    out.once('error', reject);
  });
  const child = spawn(command, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  // pipe() ends the file when the command's output ends.
  child.stdout.pipe(out);
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', resolve);
  });
  await closed;
  if (code !== 0) throw new Error(`${command} ${args.join(' ')} exited with ${code}`);
}
