import { createHash, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';

/**
 * Model folders signed by the trainer, checked by the workers and the monitor. The checksum a worker
 * verifies comes from the same registry as the model, so whoever can register a version and move
 * `production` can make the workers serve anything; signatures made with a key the registry never
 * holds (Ed25519: the trainer keeps the private key, workers and the monitor get the public one)
 * close that.
 *
 * A signature is a signed statement: a subject and the SHA-256 of every file of the folder (no
 * more, no fewer: a file the statement does not list is refused). Two subjects:
 * - `build` (`signature.json` in the folder, written when the trainer tracks a run): "the trainer
 *   built these files". Every tracked run gets one, including runs the promotion gate later
 *   rejects, so a build signature alone never makes a folder servable.
 * - `release` (the model version tag `conveyor.release_signature`, written by `promote` when the
 *   gate passes, before `production` moves): "registered model <name>, version <version>, is these
 *   files". The workers serve only a version whose release names exactly the name and version they
 *   resolved, so a folder cannot be re-registered under another version or model name (an old or
 *   rejected build replayed), and a version the gate never passed has no release at all.
 */
export const SIGNATURE_FILE = 'signature.json';
/**
 * Where a worker keeps a version's release statement beside the downloaded files (the tag's text),
 * so a cached version verifies again at a restart without the registry. Never itself listed.
 */
export const RELEASE_SIGNATURE_FILE = 'release-signature.json';
/** The model version tag holding the release statement. */
export const RELEASE_SIGNATURE_TAG = 'conveyor.release_signature';

const SCHEMA = 'conveyor.signature/v2';

export const SignatureSubject = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('build'), build: z.string().min(1) }),
  z.object({ kind: z.literal('release'), name: z.string().min(1), version: z.string().min(1) }),
]);
export type SignatureSubject = z.infer<typeof SignatureSubject>;

const Sha256 = z.string().regex(/^[0-9a-f]{64}$/);
const Statement = z.object({
  schema: z.literal(SCHEMA),
  keyId: z.string(),
  subject: SignatureSubject,
  files: z.record(z.string(), Sha256),
  signature: z.string(),
});
export type SignedStatement = z.infer<typeof Statement>;

/** A short name of a public key (the SHA-256 of its DER encoding), to tell keys apart in logs. */
export function keyId(key: KeyObject): string {
  const publicKey = key.type === 'private' ? createPublicKey(key) : key;
  return createHash('sha256')
    .update(publicKey.export({ type: 'spki', format: 'der' }))
    .digest('hex')
    .slice(0, 16);
}

function describe(subject: SignatureSubject): string {
  return subject.kind === 'build' ? `build ${subject.build}` : `${subject.name} v${subject.version}`;
}

/** The bytes signed: canonical JSON (fixed key order, files in name order). */
function payload(id: string, subject: SignatureSubject, files: Record<string, string>): Buffer {
  const sorted = Object.fromEntries(Object.entries(files).sort(([a], [b]) => (a < b ? -1 : 1)));
  const canonicalSubject =
    subject.kind === 'build'
      ? { kind: subject.kind, build: subject.build }
      : { kind: subject.kind, name: subject.name, version: subject.version };
  return Buffer.from(JSON.stringify({ schema: SCHEMA, keyId: id, subject: canonicalSubject, files: sorted }));
}

export function sha256(bytes: Buffer | string): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/**
 * The SHA-256 of every file of a model folder but the signatures themselves (`signature.json` for a
 * build, `release-signature.json`); a release lists `signature.json` too. Anything that is not a
 * plain file (a folder, a link) is an error: nothing unsigned may ride along.
 */
export async function folderDigests(dir: string, subject: SignatureSubject['kind']): Promise<Record<string, string>> {
  const skip = new Set([RELEASE_SIGNATURE_FILE, ...(subject === 'build' ? [SIGNATURE_FILE] : [])]);
  const files: Record<string, string> = {};
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (skip.has(entry.name)) continue;
    if (!entry.isFile()) throw new Error(`${entry.name} is not a plain file`);
    files[entry.name] = sha256(await readFile(path.join(dir, entry.name)));
  }
  return files;
}

export function signStatement(subject: SignatureSubject, files: Record<string, string>, privateKey: KeyObject): SignedStatement {
  const id = keyId(privateKey);
  const signature = sign(null, payload(id, subject, files), privateKey).toString('base64');
  return { schema: SCHEMA, keyId: id, subject, files, signature };
}

/** The trainer's build signature: `signature.json` over every file, for the manifest's build. */
export async function signModelFolder(dir: string, privateKey: KeyObject): Promise<void> {
  const manifest = z
    .object({ version: z.string().min(1) })
    .parse(JSON.parse(await readFile(path.join(dir, 'manifest.json'), 'utf8')));
  const statement = signStatement({ kind: 'build', build: manifest.version }, await folderDigests(dir, 'build'), privateKey);
  await writeFile(path.join(dir, SIGNATURE_FILE), `${JSON.stringify(statement, null, 2)}\n`);
}

/** A release statement for registered model `name` v`version` over the folder's files (signature.json included). */
export async function releaseStatement(
  dir: string,
  release: { name: string; version: string },
  privateKey: KeyObject,
): Promise<string> {
  const statement = signStatement({ kind: 'release', ...release }, await folderDigests(dir, 'release'), privateKey);
  return JSON.stringify(statement);
}

/**
 * Checks a statement's text: the key, the signature, and that its subject is `expected` (a release
 * for another name or version, or a build where a release is needed, is refused). The signed file
 * digests, or why not.
 */
export function verifyStatement(
  text: string,
  publicKey: KeyObject,
  expected: SignatureSubject,
): { files: Record<string, string>; problem?: undefined } | { problem: string } {
  let parsed: SignedStatement;
  try {
    parsed = Statement.parse(JSON.parse(text));
  } catch {
    return { problem: 'no valid signature statement (conveyor.signature/v2): not signed' };
  }
  if (parsed.keyId !== keyId(publicKey))
    return { problem: `signed with key ${parsed.keyId}, not with the configured key ${keyId(publicKey)}` };
  if (!verify(null, payload(parsed.keyId, parsed.subject, parsed.files), publicKey, Buffer.from(parsed.signature, 'base64')))
    return { problem: 'the signature does not match the statement' };
  const got = parsed.subject;
  const same =
    got.kind === expected.kind &&
    (got.kind === 'build'
      ? expected.kind === 'build' && got.build === expected.build
      : expected.kind === 'release' && got.name === expected.name && got.version === expected.version);
  if (!same) return { problem: `signed for ${describe(got)}, not ${describe(expected)}` };
  return { files: parsed.files };
}

/**
 * Why a folder does not verify for `expected`, or undefined when it does: the statement (the
 * folder's `signature.json` for a build, `release-signature.json` for a release) must be good, its
 * files must be exactly the folder's files with their digests, and `required` must be among them.
 */
export async function signatureProblem(
  dir: string,
  publicKey: KeyObject,
  expected: SignatureSubject,
  required: readonly string[],
): Promise<string | undefined> {
  const file = expected.kind === 'build' ? SIGNATURE_FILE : RELEASE_SIGNATURE_FILE;
  let text: string;
  try {
    text = await readFile(path.join(dir, file), 'utf8');
  } catch {
    return expected.kind === 'build'
      ? `no ${SIGNATURE_FILE}: the folder is not signed`
      : `no release signature: ${describe(expected)} was never released by the trainer (the promotion gate did not pass it)`;
  }
  const verdict = verifyStatement(text, publicKey, expected);
  if (verdict.problem !== undefined) return verdict.problem;
  for (const name of required) if (!(name in verdict.files)) return `${name} is not covered by the signature`;
  let actual: Record<string, string>;
  try {
    actual = await folderDigests(dir, expected.kind);
  } catch (error) {
    return `${(error as Error).message}: not covered by the signature`;
  }
  for (const name of Object.keys(actual).sort()) {
    if (!(name in verdict.files)) return `${name} is not covered by the signature (an extra file)`;
  }
  for (const [name, digest] of Object.entries(verdict.files)) {
    if (!(name in actual)) return `${name} is signed but missing`;
    if (actual[name] !== digest) return `${name} differs from the signed file`;
  }
  return undefined;
}
