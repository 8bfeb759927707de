import { generateKeyPairSync } from 'node:crypto';
import { cpSync, mkdirSync, mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import {
  RELEASE_SIGNATURE_FILE,
  releaseStatement,
  signatureProblem,
  signModelFolder,
  verifyStatement,
} from '../src/model/signature.js';

describe('model folder signatures', () => {
  const trainer = generateKeyPairSync('ed25519');
  const stranger = generateKeyPairSync('ed25519');
  const required = ['manifest.json', 'model.onnx', 'reference-profile.json'];
  const build = { kind: 'build', build: 'sha-224bcb5684d8' } as const;
  const release = { kind: 'release', name: 'digits', version: '3' } as const;
  let tmp: string;
  let folder: string;

  /** Releases `dir` as `name` v`version`, the way promote does, and puts the statement where the worker keeps it. */
  const releaseAs = async (dir: string, name: string, version: string, key = trainer.privateKey) =>
    writeFileSync(path.join(dir, RELEASE_SIGNATURE_FILE), await releaseStatement(dir, { name, version }, key));

  beforeEach(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'conveyor-sign-'));
    folder = path.join(tmp, 'model');
    cpSync('models/digits', folder, { recursive: true });
    await signModelFolder(folder, trainer.privateKey);
  });
  afterEach(() => rmSync(tmp, { recursive: true, force: true }));

  it('verifies a build signature, and a release for the name and version it names', async () => {
    expect(await signatureProblem(folder, trainer.publicKey, build, required)).to.equal(undefined);
    await releaseAs(folder, 'digits', '3');
    expect(await signatureProblem(folder, trainer.publicKey, release, required)).to.equal(undefined);
  });

  it('refuses an unsigned folder, another key, a changed file, and a required file the signature leaves out', async () => {
    const unsigned = path.join(tmp, 'unsigned');
    cpSync('models/digits', unsigned, { recursive: true });
    expect(await signatureProblem(unsigned, trainer.publicKey, build, required)).to.match(/not signed/);
    expect(await signatureProblem(folder, stranger.publicKey, build, required)).to.match(/not with the configured key/);
    const stray = path.join(tmp, 'other');
    cpSync(folder, stray, { recursive: true });
    await signModelFolder(stray, stranger.privateKey);
    expect(await signatureProblem(stray, trainer.publicKey, build, required)).to.match(/not with the configured key/);
    writeFileSync(path.join(folder, 'model.onnx'), Buffer.from('a different model'));
    expect(await signatureProblem(folder, trainer.publicKey, build, required)).to.match(/model.onnx differs/);
    expect(await signatureProblem(stray, stranger.publicKey, build, [...required, 'weights.bin'])).to.match(
      /weights.bin is not covered/,
    );
  });

  it('refuses a folder released for another model name', async () => {
    await releaseAs(folder, 'moderation', '3');
    expect(await signatureProblem(folder, trainer.publicKey, release, required)).to.equal(
      'signed for moderation v3, not digits v3',
    );
  });

  it('refuses an old version replayed as a newer one', async () => {
    await releaseAs(folder, 'digits', '1');
    expect(await signatureProblem(folder, trainer.publicKey, release, required)).to.equal('signed for digits v1, not digits v3');
  });

  it('refuses a version without a release: a build signature (any tracked run, rejected ones too) is not one', async () => {
    expect(await signatureProblem(folder, trainer.publicKey, release, required)).to.match(/never released by the trainer/);
    // The build statement copied where a release belongs.
    cpSync(path.join(folder, 'signature.json'), path.join(folder, RELEASE_SIGNATURE_FILE));
    expect(await signatureProblem(folder, trainer.publicKey, release, required)).to.equal(
      'signed for build sha-224bcb5684d8, not digits v3',
    );
  });

  it('refuses a file the signature does not list, a listed file that is missing, and a sub-folder', async () => {
    await releaseAs(folder, 'digits', '3');
    writeFileSync(path.join(folder, 'extra.bin'), 'not signed');
    expect(await signatureProblem(folder, trainer.publicKey, release, required)).to.equal(
      'extra.bin is not covered by the signature (an extra file)',
    );
    unlinkSync(path.join(folder, 'extra.bin'));
    mkdirSync(path.join(folder, 'more'));
    expect(await signatureProblem(folder, trainer.publicKey, release, required)).to.match(/more is not a plain file/);
    rmSync(path.join(folder, 'more'), { recursive: true });
    unlinkSync(path.join(folder, 'evaluation.json'));
    expect(await signatureProblem(folder, trainer.publicKey, release, required)).to.equal(
      'evaluation.json is signed but missing',
    );
    // A build signature is as strict: nothing may be added after the trainer signed.
    const built = path.join(tmp, 'built');
    cpSync('models/digits', built, { recursive: true });
    await signModelFolder(built, trainer.privateKey);
    writeFileSync(path.join(built, 'extra.bin'), 'not signed');
    expect(await signatureProblem(built, trainer.publicKey, build, required)).to.match(/extra.bin is not covered/);
  });

  it('refuses a statement whose subject was edited after signing', async () => {
    const text = await releaseStatement(folder, { name: 'digits', version: '1' }, trainer.privateKey);
    const edited = JSON.stringify({ ...JSON.parse(text), subject: release });
    expect(verifyStatement(edited, trainer.publicKey, release)).to.deep.equal({
      problem: 'the signature does not match the statement',
    });
  });
});
