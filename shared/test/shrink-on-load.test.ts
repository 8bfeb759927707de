import { expect } from 'chai';
import sharp from 'sharp';
import type { ModelManifest } from '../src/model/manifest.js';
import { rgbFrameManifest } from './support/manifests.js';
import { preprocess } from '../src/model/preprocess.js';

/**
 * `preprocess.shrinkOnLoad`: large JPEGs are decoded at a reduced scale (libvips' shrink-on-load)
 * to a working copy at least k × the input, then resampled exactly as any image; everything else
 * (smaller JPEGs, other formats, manifests without it) takes the exact path unchanged.
 */
const manifest = (shrinkOnLoad?: number) => rgbFrameManifest(shrinkOnLoad ? { shrinkOnLoad } : {});

/** A textured photo-sized image: a colour gradient with a fine checker on top. */
async function texture(width: number, height: number): Promise<Buffer> {
  const pixels = Buffer.alloc(width * height * 3);
  for (let y = 0; y < height; y++)
    for (let x = 0; x < width; x++) {
      const o = (y * width + x) * 3;
      const check = ((x >> 3) + (y >> 3)) & 1 ? 40 : 0;
      pixels[o] = ((x * 200) / width + check) | 0;
      pixels[o + 1] = ((y * 200) / height + check) | 0;
      pixels[o + 2] = 120 + check;
    }
  return sharp(pixels, { raw: { width, height, channels: 3 } })
    .png()
    .toBuffer();
}

const tensorOf = async (bytes: Buffer, m: ModelManifest) =>
  Buffer.from((await preprocess({ kind: 'encoded', bytes }, m, { maxPixels: 1e8 })).tensor.buffer);

describe('shrink-on-load (a per-model manifest choice)', function () {
  this.timeout(60_000);

  it('resamples a large JPEG from a copy at least k × the input, decoded at a reduced scale', async () => {
    const jpeg = await sharp(await texture(2400, 1800))
      .jpeg({ quality: 90 })
      .toBuffer();
    const shrunk = await tensorOf(jpeg, manifest(2));
    const exact = await tensorOf(jpeg, manifest());
    expect(shrunk.equals(exact)).to.equal(false);
    // The same as resampling libvips' shrunk-on-load copy (448 px on the shorter side) the exact way.
    const copy = await sharp(jpeg).resize({ width: 448, height: 448, fit: 'outside' }).png().toBuffer();
    expect((await sharp(copy).metadata()).height).to.equal(448);
    expect(shrunk.equals(await tensorOf(copy, manifest()))).to.equal(true);
  });

  it('leaves smaller JPEGs and other formats on the exact path', async () => {
    const small = await sharp(await texture(800, 600))
      .jpeg({ quality: 90 })
      .toBuffer(); // under 4 × 224 on one side
    expect((await tensorOf(small, manifest(2))).equals(await tensorOf(small, manifest()))).to.equal(true);
    const png = await texture(2400, 1800);
    expect((await tensorOf(png, manifest(2))).equals(await tensorOf(png, manifest()))).to.equal(true);
  });
});
