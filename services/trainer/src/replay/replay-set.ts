import { createHash } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { REPLAY_SET_FILE, RecordedExample } from '@conveyor/shared/contract/replay.contract';

/**
 * A recorded set on disk: `examples.jsonl` and the images it names, in one folder. Read whole: sets
 * are bounded samples (hundreds to a few thousand images), not a traffic log.
 */
export class ReplaySetError extends Error {
  override name = 'ReplaySetError';
}

export const sha256 = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

export async function readReplaySet(dir: string): Promise<RecordedExample[]> {
  const file = path.join(dir, REPLAY_SET_FILE);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new ReplaySetError(`no recorded set at ${dir} (${REPLAY_SET_FILE} unreadable: ${(error as Error).message})`);
  }
  const examples: RecordedExample[] = [];
  const ids = new Set<string>();
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    let json: unknown;
    try {
      json = JSON.parse(line);
    } catch {
      throw new ReplaySetError(`${file}:${i + 1} is not JSON`);
    }
    const parsed = RecordedExample.safeParse(json);
    if (!parsed.success) throw new ReplaySetError(`${file}:${i + 1} is not a recorded example: ${parsed.error.message}`);
    if (ids.has(parsed.data.id)) throw new ReplaySetError(`${file}:${i + 1} repeats the example id ${parsed.data.id}`);
    ids.add(parsed.data.id);
    examples.push(parsed.data);
  });
  if (examples.length === 0) throw new ReplaySetError(`${file} holds no recorded example`);
  return examples;
}

/** The image of `example`, checked against the size and sha256 recorded with it. */
export async function readExampleImage(dir: string, example: RecordedExample): Promise<Buffer> {
  const bytes = await readFile(path.join(dir, example.input.file));
  if (bytes.length !== example.input.bytes || sha256(bytes) !== example.input.sha256) {
    throw new ReplaySetError(`${example.input.file} in ${dir} is not the image recorded for example ${example.id}`);
  }
  return bytes;
}

/** Writes a set: each image under its example's file name, then the index (so a set is never half-indexed). */
export async function writeReplaySet(
  dir: string,
  entries: readonly { example: RecordedExample; bytes: Uint8Array }[],
): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (const { example, bytes } of entries) await writeFile(path.join(dir, example.input.file), bytes);
  await writeFile(
    path.join(dir, REPLAY_SET_FILE),
    entries.map((e) => JSON.stringify(RecordedExample.parse(e.example))).join('\n') + '\n',
  );
}
