import sharp from 'sharp';

/**
 * The only libvips decoders Conveyor lets run, one per accepted format (`ImageFormat` in the queue
 * contract). The gateway sniffs the bytes and forwards only those formats; the worker, which
 * decodes, refuses every other loader as well: SVG, PDF, TIFF, HEIF and the rest have a larger
 * attack surface and no business here.
 */
export function restrictDecoders(): void {
  sharp.block({ operation: ['VipsForeignLoad'] });
  sharp.unblock({
    operation: ['VipsForeignLoadJpegBuffer', 'VipsForeignLoadPngBuffer', 'VipsForeignLoadWebpBuffer', 'VipsForeignLoadGifBuffer'],
  });
}
