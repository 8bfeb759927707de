import { createHash, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';

/**
 * Model folders signed by the trainer, checked by the workers. The checksum a worker verifies comes
 * from the same registry as the model, so whoever can register a version and move `production` can
 * make the workers serve anything; a signature over the folder's files with a key the registry never
 * holds (Ed25519: the trainer keeps the private key, workers get the public one) closes that.
 *
 * `signature.json` lists every file of the folder with its SHA-256 and signs that list (canonical
 * JSON, files in name order). A folder verifies when the signature is good for the configured key,
 * every listed file has its digest, and the files the worker loads are all listed.
 */
export const SIGNATURE_FILE = 'signature.json';

const Signature = z.object({
  schema: z.literal('conveyor.signature/v1'),
  keyId: z.string(),
  files: z.record(z.string(), z.string().regex(/^[0-9a-f]{64}$/)),
  signature: z.string(),
});

/** A short name of a public key (the SHA-256 of its DER encoding), to tell keys apart in logs. */
export function keyId(key: KeyObject): string {
  const publicKey = key.type === 'private' ? createPublicKey(key) : key;
  return createHash('sha256')
    .update(publicKey.export({ type: 'spki', format: 'der' }))
    .digest('hex')
    .slice(0, 16);
}

function payload(id: string, files: Record<string, string>): Buffer {
  const sorted = Object.fromEntries(Object.entries(files).sort(([a], [b]) => (a < b ? -1 : 1)));
  return Buffer.from(JSON.stringify({ schema: 'conveyor.signature/v1', keyId: id, files: sorted }));
}

async function digests(dir: string): Promise<Record<string, string>> {
  const names = (await readdir(dir, { withFileTypes: true })).filter((e) => e.isFile() && e.name !== SIGNATURE_FILE);
  const files: Record<string, string> = {};
  for (const entry of names) {
    files[entry.name] = createHash('sha256')
      .update(await readFile(path.join(dir, entry.name)))
      .digest('hex');
  }
  return files;
}

export async function signModelFolder(dir: string, privateKey: KeyObject): Promise<void> {
  const id = keyId(privateKey);
  const files = await digests(dir);
  const signature = sign(null, payload(id, files), privateKey).toString('base64');
  await writeFile(
    path.join(dir, SIGNATURE_FILE),
    `${JSON.stringify({ schema: 'conveyor.signature/v1', keyId: id, files, signature }, null, 2)}\n`,
  );
}

/** Why a folder does not verify, or undefined when it does. `required`: files that must be covered. */
export async function signatureProblem(
  dir: string,
  publicKey: KeyObject,
  required: readonly string[],
): Promise<string | undefined> {
  let parsed;
  try {
    parsed = Signature.parse(JSON.parse(await readFile(path.join(dir, SIGNATURE_FILE), 'utf8')));
  } catch {
    return `no valid ${SIGNATURE_FILE}: the folder is not signed`;
  }
  if (parsed.keyId !== keyId(publicKey))
    return `signed with key ${parsed.keyId}, not with the configured key ${keyId(publicKey)}`;
  if (!verify(null, payload(parsed.keyId, parsed.files), publicKey, Buffer.from(parsed.signature, 'base64'))) {
    return 'the signature does not match the listed files';
  }
  for (const name of required) if (!(name in parsed.files)) return `${name} is not covered by the signature`;
  const actual = await digests(dir);
  for (const [name, sha256] of Object.entries(parsed.files)) {
    if (actual[name] !== sha256) return `${name} differs from the signed file`;
  }
  return undefined;
}
