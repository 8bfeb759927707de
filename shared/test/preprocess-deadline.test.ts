import { execFileSync } from 'node:child_process';
import { mkdtempSync, openSync, closeSync, constants, rmSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import sharp from 'sharp';
import { thinStrip } from '../../test/support/images.js';
import { rgbFrameManifest } from './support/manifests.js';
import { preprocess, type ImageInput } from '../src/model/preprocess.js';
import { ProblemError } from '../src/problem.js';

/**
 * The preprocessing budget is CPU time, not wall-clock time (issue 18, defect 10): a valid image
 * that waits while the process is paused or its work queued behind others spends no CPU and must
 * not be refused for the wait. The wait is made deterministic: every libuv thread (where sharp's
 * work runs) is held in a blocking open() of a FIFO, so the image's pipeline cannot start until
 * the FIFOs are opened for writing — a stand-in for a paused or starved worker that costs no CPU.
 */
const encoded = (bytes: Buffer): ImageInput => ({ kind: 'encoded', bytes });
const manifest = rgbFrameManifest();

/** Holds every libuv thread in a FIFO open() until release() is called. */
function holdThreadPool(): { release(): Promise<void>; dir: string } {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-pool-'));
  const threads = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
  const fifos = Array.from({ length: threads }, (_, i) => path.join(dir, `fifo-${i}`));
  for (const fifo of fifos) execFileSync('mkfifo', [fifo]);
  // Queued before the image's work, so they take every thread first (libuv's queue is FIFO).
  const readers: Promise<FileHandle>[] = fifos.map((fifo) => open(fifo, 'r'));
  return {
    dir,
    async release() {
      // O_RDWR on a FIFO never blocks on Linux and completes the readers' open().
      const writers = fifos.map((fifo) => openSync(fifo, constants.O_RDWR));
      for (const handle of await Promise.all(readers)) await handle.close();
      writers.forEach((fd) => closeSync(fd));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

describe('preprocessing deadline: CPU time, not wall-clock time', function () {
  this.timeout(60_000);

  it('does not refuse a valid image that waited past the budget without spending CPU (a pause, a queue)', async () => {
    const photo = await sharp({ create: { width: 640, height: 427, channels: 3, background: { r: 90, g: 140, b: 60 } } })
      .jpeg()
      .toBuffer();
    const budgetMs = 300;
    const pool = holdThreadPool();
    const started = performance.now();
    // With the size given, as the worker gives it (read by the gateway), the budget starts at once.
    const options = { maxPixels: 40_000_000, timeoutMs: budgetMs, size: { width: 640, height: 427 } };
    const pending = preprocess(encoded(photo), manifest, options).then(
      (prepared) => ({ prepared }),
      (error: unknown) => ({ error }),
    );
    // The pause itself: wall-clock time passing, three budgets' worth, while the image cannot start.
    await new Promise((resolve) => setTimeout(resolve, 3 * budgetMs));
    await pool.release();
    const outcome = await pending;
    expect(performance.now() - started).to.be.greaterThan(budgetMs); // the wait really outlasted the budget
    expect('error' in outcome ? (outcome.error as Error).message : undefined).to.equal(undefined);
    expect('prepared' in outcome && outcome.prepared.tensor.length).to.equal(3 * 224 * 224);
  });

  it('still refuses, for good, an image that spends the budget itself', async () => {
    const error = (await preprocess(encoded(await thinStrip(3_000_000)), manifest, {
      maxPixels: 40_000_000,
      timeoutMs: 100,
    }).catch((e: unknown) => e)) as ProblemError;
    expect(error).to.be.instanceOf(ProblemError);
    expect(error.slug).to.equal('processing-deadline');
    expect(error.permanent).to.equal(true);
  });
});
