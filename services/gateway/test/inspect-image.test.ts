import { expect } from 'chai';
import sharp from 'sharp';
import { ProblemError } from '@conveyor/shared/problem';
import { jpegDeclaringMore, pngBombHeader } from '../../../test/support/images.js';
import { inspectImage } from '../src/intake/inspect-image.js';

const limits = (maxPixels: number) => ({ maxPixels, maxSide: 16_384, maxAspectRatio: 50 });

describe('image inspection at the gateway', () => {
  const base = () => sharp({ create: { width: 30, height: 20, channels: 3, background: '#336699' } });

  it('accepts JPEG, PNG, WebP, GIF, TIFF and AVIF, reading the dimensions from the header', async () => {
    for (const [format, bytes] of [
      ['jpeg', await base().jpeg().toBuffer()],
      ['png', await base().png().toBuffer()],
      ['webp', await base().webp().toBuffer()],
      ['gif', await base().gif().toBuffer()],
      ['tiff', await base().tiff().toBuffer()],
      ['avif', await base().avif().toBuffer()],
    ] as const) {
      expect(await inspectImage(bytes, limits(1e6))).to.deep.equal({ format, width: 30, height: 20 });
    }
  });

  it('refuses other types by their bytes with 415', async () => {
    for (const bytes of [
      // A 1×1 BMP, 24-bit.
      Buffer.from(
        '424d3a0000000000000036000000280000000100000001000000010018000000000004000000130b0000130b00000000000000000000ffffff00',
        'hex',
      ),
      Buffer.from('<svg xmlns="http://www.w3.org/2000/svg"/>'),
      Buffer.from('%PDF-1.7'),
    ]) {
      const error = await inspectImage(bytes, limits(1e6)).catch((e: unknown) => e);
      expect(error).to.be.instanceOf(ProblemError);
      expect((error as ProblemError).status).to.equal(415);
    }
  });

  it('refuses a decompression bomb from its header', async () => {
    const error = (await inspectImage(pngBombHeader(100_000, 100_000), limits(40_000_000)).catch(
      (e: unknown) => e,
    )) as ProblemError;
    expect(error.slug).to.equal('image-too-large');
    expect(error.extra).to.include({ width: 100_000, height: 100_000 });
  });

  it('refuses a side or an aspect ratio beyond the limits from the header, inside the pixel limit', async () => {
    for (const [width, height, limit] of [
      [1, 40_000_000, 'limitSide'],
      [20_000, 1000, 'limitSide'],
      [6000, 100, 'limitAspectRatio'],
      [100, 6000, 'limitAspectRatio'],
    ] as const) {
      const error = (await inspectImage(pngBombHeader(width, height), limits(40_000_000)).catch(
        (e: unknown) => e,
      )) as ProblemError;
      expect(error.slug, `${width}×${height}`).to.equal('image-too-large');
      expect(error.extra).to.have.property(limit);
    }
    expect(await inspectImage(pngBombHeader(5000, 100), limits(40_000_000))).to.include({ width: 5000, height: 100 });
  });

  it('reports the upright size of an EXIF-rotated photo', async () => {
    const rotated = await base().withMetadata({ orientation: 6 }).jpeg().toBuffer();
    expect(await inspectImage(rotated, limits(1e6))).to.include({ width: 20, height: 30 });
  });
});

describe('JPEG density check at the gateway', () => {
  const limits = { maxPixels: 40_000_000, maxSide: 16_384, maxAspectRatio: 50 };

  it('refuses a JPEG whose header declares far more pixels than its data can hold', async () => {
    const error = (await inspectImage(await jpegDeclaringMore(6000), limits).catch((e: unknown) => e)) as ProblemError;
    expect(error).to.be.instanceOf(ProblemError);
    expect(error.slug).to.equal('undecodable-image');
    expect(error.detail).to.match(/truncated/);
  });

  it('accepts real JPEGs however well they compress: flat, progressive, large', async () => {
    const flat = sharp({ create: { width: 6000, height: 4000, channels: 3, background: '#ffffff' } });
    for (const bytes of [
      await flat.clone().jpeg({ quality: 50 }).toBuffer(),
      await flat.clone().jpeg({ progressive: true, optimiseScans: true, quality: 30 }).toBuffer(),
      await flat.clone().greyscale().jpeg({ quality: 10, optimiseCoding: true }).toBuffer(),
      await sharp({ create: { width: 16, height: 16, channels: 3, background: '#000' } })
        .jpeg()
        .toBuffer(),
    ]) {
      expect(await inspectImage(bytes, limits)).to.include({ format: 'jpeg' });
    }
  });
});
