import sharp from 'sharp';

/**
 * The only libvips decoders Conveyor lets run, one per accepted format (`ImageFormat` in the queue
 * contract). The gateway sniffs the bytes and forwards only those formats; the worker, which
 * decodes, refuses every other loader as well: SVG (librsvg, external references), PDF, JPEG 2000,
 * FITS, Matlab, raw camera files and the rest have a larger attack surface and no business here.
 *
 * The names are libvips' own and change between releases: libvips 8.18 (bundled with sharp 0.35)
 * decodes GIF with libnsgif (`…NsgifBuffer`, not the older `…GifBuffer`), AVIF with libheif (its
 * bundled build has the AV1 decoder only, so HEIC is not decodable and the gateway refuses it).
 * `decoders.test.ts` decodes a real file of every accepted format under this allow-list.
 */
export const ALLOWED_LOADERS = [
  'VipsForeignLoadJpegBuffer',
  'VipsForeignLoadPngBuffer',
  'VipsForeignLoadWebpBuffer',
  'VipsForeignLoadNsgifBuffer',
  'VipsForeignLoadTiffBuffer',
  'VipsForeignLoadHeifBuffer',
] as const;

export function restrictDecoders(): void {
  sharp.block({ operation: ['VipsForeignLoad'] });
  sharp.unblock({
    operation: [...ALLOWED_LOADERS],
  });
}
