import { exec } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { ensureModerationModel, readPhoto } from '../../scripts/models/moderation.js';
import { ROOT } from '../../harness/service-process.js';
import { startCallbackReceiver, type CallbackReceiver } from '../support/callback-receiver.js';
import { request } from '../support/http.js';
import { randomPrefix, testRedisUrl } from '../support/redis.js';
import { freePort } from '../../harness/free-port.js';
import { MAKE_RUN, runScript, type RunScript } from '../support/run-script.js';
import { startUrlServer, type UrlServer } from '../support/url-server.js';
import { until } from '../support/wait.js';

const sh = promisify(exec);

/**
 * Examples that run: every shell command of the README's "Quick start" and of the docs pages
 * "Getting started" and "API", taken from the Markdown itself, is run with bash against `make run`
 * itself (its build, then the gateway, a worker serving both models, the monitor, on the test's
 * Redis), so the docs cannot drift from the code or from what a newcomer starts.
 * Only these blocks are not run, each for its reason (the test fails if the list no longer matches
 * the pages): the ones starting the system (`make run`: this test runs it, with the Quick start's
 * settings on ports of its own; `make test`: this test is part of it) and "With containers" (Docker; `make compose-smoke` runs its scaling commands).
 * The addresses are the README's, rewritten to the ones of this run: the gateway for
 * localhost:8080, a local image server for the URL example's 127.0.0.1:8000 (allowed with
 * URL_ALLOW_CIDRS as the README says), a local receiver for the callback URL, and one of
 * scikit-image's photos (shipped with the moderation model's tests) for `photo.jpg`.
 */
interface Block {
  readonly heading: string;
  readonly commands: string[];
}

/** The shell blocks of a Markdown file, from the heading `from` (or the top) to the heading `to` (or the end). */
function shellBlocks(file: string, from?: string, to?: string): Block[] {
  const markdown = readFileSync(path.join(ROOT, file), 'utf8');
  const start = from === undefined ? 0 : markdown.indexOf(`\n${from}\n`);
  const end = to === undefined ? markdown.length : markdown.indexOf(`\n${to}\n`, start);
  expect(start, `${file}: ${from ?? ''}`).to.be.at.least(0);
  expect(end, `${file}: ${to ?? ''}`).to.be.greaterThan(start);
  const section = markdown.slice(start, end);
  const blocks: Block[] = [];
  let heading = `${file} ${from ?? ''}`.trim();
  let inBlock = false;
  let lines: string[] = [];
  for (const line of section.split('\n')) {
    if (!inBlock && /^#{1,3} /.test(line)) heading = `${file} ${line}`;
    if (line.startsWith('```')) {
      if (inBlock) {
        blocks.push({ heading, commands: commandsOf(lines) });
        inBlock = false;
      } else if (line === '```sh') {
        inBlock = true;
        lines = [];
      }
      continue;
    }
    if (inBlock) lines.push(line);
  }
  return blocks;
}

/** The commands of a block: comment lines dropped, trailing comments (after two or more spaces) cut. */
function commandsOf(lines: string[]): string[] {
  return lines
    .filter((l) => !/^\s*#/.test(l) && !/^\s+\S/.test(l))
    .map((l) => l.replace(/\s{2,}#.*$/, '').trim())
    .filter((l) => l.length > 0);
}

describe('README examples run against a real system', function () {
  this.timeout(600_000);
  const prefix = randomPrefix('readme');
  let run: RunScript;
  let gateway: { url: string };
  let images: UrlServer;
  let receiver: CallbackReceiver;
  let dir: string;
  const blocks = [
    ...shellBlocks('README.md', '## Quick start', '## Tests'),
    ...shellBlocks('docs/getting-started.md'),
    ...shellBlocks('docs/api.md'),
  ];
  const skipped = (b: Block) =>
    b.heading.endsWith('### With containers') || b.commands.some((c) => c.startsWith('make run') || c.startsWith('make test'));

  before(async () => {
    await ensureModerationModel();
    dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-readme-'));
    writeFileSync(path.join(dir, 'photo.jpg'), readPhoto('chelsea').bytes);
    images = await startUrlServer({
      '/seven.png': { type: 'image/png', body: readFileSync(path.join(ROOT, 'docs/examples/seven.png')) },
    });
    receiver = await startCallbackReceiver();
    const [port, monitorPort] = [await freePort(), await freePort()];
    gateway = { url: `http://127.0.0.1:${port}` };
    // What the README's Quick start sets for the examples that need it, on ports of this run.
    run = runScript(
      {
        PORT: String(port),
        MONITOR_PORT: String(monitorPort),
        METRICS_PORT: '0',
        REDIS_URL: testRedisUrl(),
        REDIS_PREFIX: prefix,
        MODELS: 'digits,moderation',
        URL_ALLOW_CIDRS: '127.0.0.1/32',
        CALLBACK_SECRET: `whsec_${Buffer.alloc(32, 7).toString('base64')}`,
      },
      MAKE_RUN,
    );
    // `make run` builds first (a minute or two on a clean clone), then starts everything.
    await until(
      'both models ready behind make run',
      async () => {
        if (run.child.exitCode !== null) throw new Error(`make run exited with ${run.child.exitCode}:\n${run.stderr.join('\n')}`);
        const ready = await Promise.all(
          ['digits', 'moderation'].map((m) => request(`${gateway.url}/v2/models/${m}/ready`).catch(() => undefined)),
        );
        return ready.every((r) => r?.status === 200) || undefined;
      },
      300_000,
    );
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(`--- last lines of make run ---\n${run.stdout.slice(-30).join('\n')}`);
  });
  after(async () => {
    await run.stop();
    await Promise.all([images.close(), receiver.close()]);
    rmSync(dir, { recursive: true, force: true });
  });

  it('finds the blocks it runs, and skips exactly the ones it says', () => {
    expect(blocks.filter(skipped).map((b) => b.heading)).to.deep.equal([
      'README.md ## Quick start',
      'README.md ### With containers',
      'docs/getting-started.md ## Quick start',
      'docs/getting-started.md ### With containers',
    ]);
    expect(blocks.filter((b) => !skipped(b)).flatMap((b) => b.commands).length).to.be.greaterThan(10);
  });

  it('runs every command of the Quick start, Getting started and API, with the answers the pages promise', async () => {
    const host = new URL(gateway.url).host;
    let lastJob: string | undefined;
    const ran: string[] = [];
    for (const block of blocks.filter((b) => !skipped(b))) {
      for (const original of block.commands) {
        if (original.includes('<id>')) expect(lastJob, `a job id for: ${original}`).to.be.a('string');
        const command = original
          .replaceAll('localhost:8080', host)
          .replaceAll('127.0.0.1:8000', `127.0.0.1:${images.port}`)
          .replaceAll('https://hooks.example.org/conveyor', receiver.url('/ok'))
          .replaceAll('@photo.jpg', `@${path.join(dir, 'photo.jpg')}`)
          .replaceAll('<id>', lastJob ?? '')
          // an HTTP error status must fail the example too
          .replace(/^curl /, 'curl --fail-with-body -sS --max-time 60 ');
        let stdout: string;
        try {
          ({ stdout } = await sh(command, { cwd: ROOT, shell: '/bin/bash', env: { ...process.env, CONVEYOR_URL: gateway.url } }));
        } catch (error) {
          const e = error as { stdout?: string; stderr?: string };
          throw new Error(`docs example failed: ${original}\n${e.stdout ?? ''}\n${e.stderr ?? ''}`, { cause: error });
        }
        ran.push(original);
        const id = /"id":\s*"([0-9a-f-]{36})"/.exec(stdout)?.[1];
        if (id) lastJob = id;
        const waits = !/respond-async|--async|ready|events|models$|openapi|drift/.test(original);
        if (waits && /seven\.png/.test(original) && !original.includes('--async')) {
          expect(stdout, original).to.match(/"label":\s*"7"/);
        }
        if (/three-scan/.test(original)) expect(stdout, original).to.match(/"label":\s*"3"/);
        if (/moderation\/predict/.test(original))
          expect(stdout, original).to.match(/"label":\s*"(Drawing|Hentai|Neutral|Porn|Sexy)"/);
        if (/events/.test(original)) expect(stdout, original).to.match(/event: result/);
      }
    }
    expect(ran.some((c) => c.includes('"url"'))).to.equal(true);
    // The callback example's job was delivered to the receiver.
    await until('the README callback', () => Promise.resolve(receiver.deliveries.length > 0));
  });
});
