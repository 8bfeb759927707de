import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { keyId } from '@conveyor/shared/model/signature';
import { ROOT } from '../harness/service-process.js';

/**
 * `make signing-key`: an Ed25519 key pair for signing model folders. The private key is for the
 * trainer only (MODEL_SIGNING_KEY_FILE; keep it out of the registry, the repository and the
 * workers); the public key goes to every worker (MODEL_SIGNING_PUBLIC_KEY_FILE). Never overwrites.
 */
const dir = path.resolve(process.env.KEY_DIR ?? path.join(ROOT, 'data', 'keys'));
const privateFile = path.join(dir, 'model-signing.key.pem');
const publicFile = path.join(dir, 'model-signing.pub.pem');
if (existsSync(privateFile)) {
  console.error(`${privateFile} exists already; not overwriting it`);
  process.exit(1);
}
mkdirSync(dir, { recursive: true, mode: 0o700 });
const { privateKey, publicKey } = generateKeyPairSync('ed25519');
writeFileSync(privateFile, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
writeFileSync(publicFile, publicKey.export({ type: 'spki', format: 'pem' }), { mode: 0o644 });
console.log(`key ${keyId(publicKey)}:`);
console.log(`  trainer: MODEL_SIGNING_KEY_FILE=${path.relative(ROOT, privateFile)}`);
console.log(`  workers: MODEL_SIGNING_PUBLIC_KEY_FILE=${path.relative(ROOT, publicFile)}`);
