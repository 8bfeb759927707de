import { expect } from 'chai';
import sharp from 'sharp';
import { ProblemError } from '@conveyor/shared/problem';
import { pngBombHeader } from '../../../test/support/images.js';
import { inspectImage } from '../src/intake/inspect-image.js';

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
      expect(await inspectImage(bytes, 1e6)).to.deep.equal({ format, width: 30, height: 20 });
    }
  });

  it('refuses other types by their bytes with 415', async () => {
    for (const bytes of [
      // A 1×1 BMP, 24-bit.
      Buffer.from('424d3a0000000000000036000000280000000100000001000000010018000000000004000000130b0000130b00000000000000000000ffffff00', 'hex'),
      Buffer.from('<svg xmlns="http://www.w3.org/2000/svg"/>'),
      Buffer.from('%PDF-1.7'),
    ]) {
      const error = await inspectImage(bytes, 1e6).catch((e: unknown) => e);
      expect(error).to.be.instanceOf(ProblemError);
      expect((error as ProblemError).status).to.equal(415);
    }
  });

  it('refuses a decompression bomb from its header', async () => {
    const error = (await inspectImage(pngBombHeader(100_000, 100_000), 40_000_000).catch((e: unknown) => e)) as ProblemError;
    expect(error.slug).to.equal('image-too-large');
    expect(error.extra).to.include({ width: 100_000, height: 100_000 });
  });

  it('reports the upright size of an EXIF-rotated photo', async () => {
    const rotated = await base().withMetadata({ orientation: 6 }).jpeg().toBuffer();
    expect(await inspectImage(rotated, 1e6)).to.include({ width: 20, height: 30 });
  });
});
