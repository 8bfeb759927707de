import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import type { InferenceThread } from '@conveyor/shared/model/inference-thread';
import { readManifest, sessionOptionsFor } from '@conveyor/shared/model/runtime';

/**
 * The CPU of the hand-off to an inference thread, two implementations of InferenceThread side by
 * side in one process (alternating rounds, so the shared machine's load hits both alike; CPU of
 * every thread by process.cpuUsage, user and system apart; medians). The digits CNN runs in
 * ~0.04 ms, so its runs are mostly hand-off; the outputs of both must be bit-identical.
 *
 *   git show <commit>:shared/src/model/inference-thread.ts > /tmp/b.ts
 *   node --conditions=conveyor-source --import tsx bench/inference-handoff.bench.ts --b /tmp/b.ts
 *        [--a shared/src/model/inference-thread.ts] [--dir models/digits] [--runs 2000] [--rounds 12]
 */
const { values } = parseArgs({
  options: {
    a: { type: 'string', default: 'shared/src/model/inference-thread.ts' },
    b: { type: 'string' },
    dir: { type: 'string', default: 'models/digits' },
    runs: { type: 'string', default: '2000' },
    rounds: { type: 'string', default: '12' },
  },
});
if (!values.b) throw new Error('--b: the other implementation (a copy of inference-thread.ts) is needed');
const runs = Number(values.runs);
const rounds = Number(values.rounds);
const manifest = await readManifest(values.dir);
const bytes = await readFile(path.join(values.dir, manifest.file));
type Start = { start: typeof InferenceThread.start };
const load = async (file: string) =>
  ((await import(path.resolve(file))) as { InferenceThread: Start }).InferenceThread.start(
    bytes,
    sessionOptionsFor({ threads: 1 }),
  );
const engines: Record<string, InferenceThread> = { a: await load(values.a), b: await load(values.b) };
const { channels, height, width, layout, name } = manifest.input;
const dims = layout === 'NCHW' ? [1, channels, height, width] : [1, height, width, channels];
const fetches = manifest.output.embedding ? [manifest.output.name, manifest.output.embedding] : [manifest.output.name];
const data = new Float32Array(channels * height * width).map((_, i) => (i % 97) / 97);
const [first, second] = [await engines.a!.run(name, data, dims, fetches), await engines.b!.run(name, data, dims, fetches)];
for (const f of fetches) {
  if (
    !Buffer.from(first[f]!.buffer, first[f]!.byteOffset, first[f]!.byteLength).equals(
      Buffer.from(second[f]!.buffer, second[f]!.byteOffset, second[f]!.byteLength),
    )
  ) {
    throw new Error(`the outputs differ: ${f}`);
  }
}
console.log(`outputs bit-identical (${fetches.map((f) => `${f}: ${first[f]!.length}`).join(', ')})`);
const results: Record<string, { total: number[]; user: number[]; system: number[] }> = {};
for (let r = 0; r < rounds; r++) {
  for (const [key, engine] of Object.entries(engines)) {
    const t0 = process.cpuUsage();
    for (let i = 0; i < runs; i++) await engine.run(name, data, dims, fetches);
    const { user, system } = process.cpuUsage(t0);
    const entry = (results[key] ??= { total: [], user: [], system: [] });
    entry.total.push((user + system) / 1000 / runs);
    entry.user.push(user / 1000 / runs);
    entry.system.push(system / 1000 / runs);
  }
}
const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
for (const [key, r] of Object.entries(results)) {
  console.log(
    `${key} (${key === 'a' ? values.a : values.b}): CPU ${median(r.total).toFixed(4)} ms per run (user ${median(r.user).toFixed(4)}, system ${median(r.system).toFixed(4)}); rounds ${r.total.map((v) => v.toFixed(3)).join(' ')}`,
  );
}
await Promise.all(Object.values(engines).map((e) => e.release()));
