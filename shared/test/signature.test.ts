import { generateKeyPairSync } from 'node:crypto';
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { signatureProblem, signModelFolder } from '../src/model/signature.js';

describe('model folder signatures', () => {
  const trainer = generateKeyPairSync('ed25519');
  const stranger = generateKeyPairSync('ed25519');
  const required = ['manifest.json', 'model.onnx', 'reference-profile.json'];
  let tmp: string;
  let folder: string;

  beforeEach(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'conveyor-sign-'));
    folder = path.join(tmp, 'model');
    cpSync('models/digits', folder, { recursive: true });
    await signModelFolder(folder, trainer.privateKey);
  });
  afterEach(() => rmSync(tmp, { recursive: true, force: true }));

  it('verifies a folder signed with the key the worker trusts', async () => {
    expect(await signatureProblem(folder, trainer.publicKey, required)).to.equal(undefined);
  });

  it('refuses an unsigned folder, another key, a changed file, and a file the signature leaves out', async () => {
    const unsigned = path.join(tmp, 'unsigned');
    cpSync('models/digits', unsigned, { recursive: true });
    expect(await signatureProblem(unsigned, trainer.publicKey, required)).to.match(/not signed/);
    expect(await signatureProblem(folder, stranger.publicKey, required)).to.match(/not with the configured key/);
    const stray = path.join(tmp, 'other');
    cpSync(folder, stray, { recursive: true });
    await signModelFolder(stray, stranger.privateKey);
    expect(await signatureProblem(stray, trainer.publicKey, required)).to.match(/not with the configured key/);
    writeFileSync(path.join(folder, 'model.onnx'), Buffer.from('a different model'));
    expect(await signatureProblem(folder, trainer.publicKey, required)).to.match(/model.onnx differs/);
    expect(await signatureProblem(stray, stranger.publicKey, [...required, 'weights.bin'])).to.match(
      /weights.bin is not covered/,
    );
  });
});
