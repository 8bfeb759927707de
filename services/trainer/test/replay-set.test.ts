import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { REPLAY_SET_FILE, type RecordedExample } from '@conveyor/shared/contract/replay.contract';
import { ReplaySetError, readExampleImage, readReplaySet, sha256, writeReplaySet } from '../src/replay/replay-set.js';

const bytes = Buffer.from('an image, as far as this test is concerned');
const example = (id: string): RecordedExample => ({
  kind: 'recorded-example',
  version: 1,
  id,
  model: 'digits',
  recordedAt: '2026-12-06T17:00:00.000Z',
  input: { file: `${id}.png`, format: 'png', bytes: bytes.length, sha256: sha256(bytes) },
  production: {
    model: { name: 'digits', version: 'sha-aaaaaaaaaaaa' },
    prediction: { label: '7', index: 7, confidence: 0.9, top: [{ label: '7', confidence: 0.9 }] },
    inferenceMs: 0.4,
  },
});

describe('replay set on disk', () => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(path.join(os.tmpdir(), 'conveyor-replay-set-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('reads back what it wrote, images checked against their sha256', async () => {
    await writeReplaySet(dir, [{ example: example('a'), bytes }]);
    const [read] = await readReplaySet(dir);
    expect(read).to.deep.equal(example('a'));
    expect(await readExampleImage(dir, read!)).to.deep.equal(bytes);
  });

  it('refuses an image altered after recording', async () => {
    await writeReplaySet(dir, [{ example: example('a'), bytes }]);
    writeFileSync(path.join(dir, 'a.png'), Buffer.from(bytes).fill(0x41, 0, 2));
    const [read] = await readReplaySet(dir);
    const error = await readExampleImage(dir, read!).catch((e: unknown) => e);
    expect(error).to.be.instanceOf(ReplaySetError);
  });

  it('refuses a repeated id and a line that is not a recorded example, naming the line', async () => {
    writeFileSync(path.join(dir, REPLAY_SET_FILE), [example('a'), example('a')].map((e) => JSON.stringify(e)).join('\n'));
    expect(((await readReplaySet(dir).catch((e: unknown) => e)) as Error).message).to.match(/:2 repeats the example id a$/);
    writeFileSync(path.join(dir, REPLAY_SET_FILE), JSON.stringify({ ...example('a'), kind: 'something-else' }));
    expect(((await readReplaySet(dir).catch((e: unknown) => e)) as Error).message).to.contain(':1 is not a recorded example');
  });
});
