import { ProblemError } from '@conveyor/shared/problem';

/**
 * A JPEG cannot hold fewer than one bit of entropy-coded data per 8×8 block of its first component:
 * with Huffman coding (baseline, extended and progressive frames, i.e. nearly every JPEG there is)
 * every block's DC coefficient takes at least one code bit. A file below that bound declares more
 * pixels than it carries: a truncated or patched header (28×28 of data under a 6000×6000 frame
 * decodes to grey fill, and costs the worker the full decode). Arithmetic-coded frames, which can
 * go below one bit per block, are not judged. The check reads the markers only, never the pixels.
 */
export function checkJpegDensity(bytes: Buffer): void {
  let offset = 2; // after SOI
  let blocks: number | undefined;
  while (offset + 4 <= bytes.length) {
    if (bytes[offset] !== 0xff) return; // not a marker where one should be: the decoder will say more
    const marker = bytes[offset + 1]!;
    if (marker === 0xff) {
      offset++; // fill byte
      continue;
    }
    const length = bytes.readUInt16BE(offset + 2);
    // SOF0 (baseline), SOF1 (extended), SOF2 (progressive): Huffman-coded frames.
    if ((marker === 0xc0 || marker === 0xc1 || marker === 0xc2) && offset + 9 < bytes.length) {
      const height = bytes.readUInt16BE(offset + 5);
      const width = bytes.readUInt16BE(offset + 7);
      blocks = Math.ceil(width / 8) * Math.ceil(height / 8);
    } else if (marker >= 0xc3 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      return; // lossless, hierarchical or arithmetic-coded frames: not judged here
    }
    if (marker === 0xda) {
      if (blocks === undefined) return;
      const entropyBytes = bytes.length - (offset + 2 + length);
      if (entropyBytes * 8 < blocks) {
        throw new ProblemError(
          'undecodable-image',
          `The JPEG is truncated: it declares ${blocks} blocks of 8×8 pixels but holds ${Math.max(0, entropyBytes)} bytes of image data`,
        );
      }
      return;
    }
    offset += 2 + length;
  }
}
