import { expect } from 'chai';
import sharp from 'sharp';
import { digitInEveryFormat, heldOutDigits } from '../../test/support/images.js';
import { ImageFormat } from '../src/contract/common.contract.js';
import { restrictDecoders } from '../src/model/decoders.js';

describe('decoder allow-list', () => {
  before(() => restrictDecoders());
  after(() => sharp.unblock({ operation: ['VipsForeignLoad'] }));

  it('decodes a real file of every accepted format, and its first frame or page only', async () => {
    const { dataset, split } = await heldOutDigits();
    const files = await digitInEveryFormat(dataset.samples[split.test[0]!]!.pixels);
    expect(Object.keys(files).sort()).to.deep.equal([...ImageFormat.options].sort());
    for (const [format, bytes] of Object.entries(files)) {
      const { info } = await sharp(bytes, { pages: 1 }).raw().toBuffer({ resolveWithObject: true });
      expect({ format, width: info.width, height: info.height }).to.deep.equal({ format, width: 84, height: 84 });
    }
  });

  it('refuses the loaders with no business here (SVG, PPM, raw camera and the rest)', async () => {
    const svg = Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8"/></svg>');
    const ppm = Buffer.concat([Buffer.from('P6\n2 2\n255\n'), Buffer.alloc(12, 200)]);
    for (const bytes of [svg, ppm]) {
      let error: unknown;
      await sharp(bytes)
        .raw()
        .toBuffer()
        .catch((e: unknown) => (error = e));
      expect(String(error)).to.match(/unsupported image format/);
    }
  });
});
