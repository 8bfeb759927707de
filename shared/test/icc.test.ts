import { expect } from 'chai';
import sharp, { type Sharp } from 'sharp';
import { embeddedIccProfile, isSrgbProfile } from '../src/model/icc.js';
import { rgbFrameManifest } from './support/manifests.js';
import { preprocess } from '../src/model/preprocess.js';

/**
 * Embedded sRGB profiles are not applied (the transform changes no pixel and cost ~4 ms per
 * photo); every other profile still is. The profiles are libvips' own (sRGB v4 and Display P3).
 */
const manifest = rgbFrameManifest();

/** A colourful gradient, so that a colour transform has something to change. */
async function gradient(): Promise<Buffer> {
  const width = 320;
  const height = 200;
  const pixels = Buffer.alloc(width * height * 3);
  for (let y = 0; y < height; y++)
    for (let x = 0; x < width; x++) {
      const o = (y * width + x) * 3;
      pixels[o] = (x * 255) / width;
      pixels[o + 1] = (y * 255) / height;
      pixels[o + 2] = 255 - (x * 255) / width;
    }
  return sharp(pixels, { raw: { width, height, channels: 3 } })
    .png()
    .toBuffer();
}

describe('embedded ICC profiles', function () {
  this.timeout(30_000);

  it('reads the profile of a JPEG, a PNG and a WebP as libvips does, and none where there is none', async () => {
    const source = await gradient();
    for (const encode of [(s: Sharp) => s.jpeg(), (s: Sharp) => s.png(), (s: Sharp) => s.webp()]) {
      const bytes = await encode(sharp(source).withIccProfile('srgb')).toBuffer();
      const { icc } = await sharp(bytes).metadata();
      expect(embeddedIccProfile(bytes)?.equals(icc!)).to.equal(true);
      expect(embeddedIccProfile(await encode(sharp(source)).toBuffer())).to.equal(undefined);
    }
  });

  it('tells sRGB from Display P3 and CMYK', async () => {
    const source = await gradient();
    const profile = async (name: string) =>
      (await sharp(await sharp(source).withIccProfile(name).jpeg().toBuffer()).metadata()).icc!;
    expect(isSrgbProfile(await profile('srgb'))).to.equal(true);
    expect(isSrgbProfile(await profile('p3'))).to.equal(false);
    expect(isSrgbProfile(Buffer.from('not a profile'))).to.equal(false);
  });

  it('gives the same tensor for a photo with an sRGB profile as without one, and applies a P3 profile', async () => {
    const source = await gradient();
    const plain = await sharp(source).jpeg({ quality: 95 }).toBuffer();
    const srgb = await sharp(source).withIccProfile('srgb').jpeg({ quality: 95 }).toBuffer();
    const p3 = await sharp(source).withIccProfile('p3').jpeg({ quality: 95 }).toBuffer();
    const run = async (bytes: Buffer) => (await preprocess({ kind: 'encoded', bytes }, manifest, { maxPixels: 1e7 })).tensor;
    expect(Buffer.from((await run(srgb)).buffer).equals(Buffer.from((await run(plain)).buffer))).to.equal(true);
    // A P3 profile is honoured: the tensor is that of the converted pixels, which differ from the stored ones.
    const p3Tensor = await run(p3);
    const applied = await sharp(p3).raw().toBuffer();
    const ignored = await sharp(p3, { ignoreIcc: true }).raw().toBuffer();
    expect(applied.equals(ignored), 'libvips converts P3 pixels').to.equal(false);
    const fromApplied = await run(
      await sharp(applied, { raw: { width: 320, height: 200, channels: 3 } })
        .png()
        .toBuffer(),
    );
    expect(Buffer.from(p3Tensor.buffer).equals(Buffer.from(fromApplied.buffer))).to.equal(true);
  });
});
