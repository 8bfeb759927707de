import { fileTypeFromBuffer } from 'file-type';
import sharp from 'sharp';
import type { ImageFormat } from '@conveyor/shared/contract/queue.contract';
import { ProblemError } from '@conveyor/shared/problem';

/**
 * The cheap checks the gateway makes before queueing: the type comes from the bytes (magic
 * numbers, never the client's Content-Type or file name), and the declared dimensions come from
 * the header, so a decompression bomb is refused without decoding a pixel. Full decoding (and
 * with it truncation) is the worker's job: doing it here too would double the CPU per image.
 */
export interface ImageFacts {
  readonly format: ImageFormat;
  readonly width: number;
  readonly height: number;
}

const FORMATS: Readonly<Record<string, ImageFormat>> = {
  'image/jpeg': 'jpeg',
  'image/png': 'png',
  'image/apng': 'png', // decoded as its first frame
  'image/webp': 'webp',
  'image/gif': 'gif', // first frame
};

export async function inspectImage(bytes: Buffer, maxPixels: number): Promise<ImageFacts> {
  const type = await fileTypeFromBuffer(bytes);
  const format = type ? FORMATS[type.mime] : undefined;
  if (!format) {
    throw new ProblemError(
      'unsupported-media-type',
      type
        ? `${type.mime} is not accepted; send JPEG, PNG, WebP or GIF`
        : 'The content is not a recognised image; send JPEG, PNG, WebP or GIF',
      type ? { detected: type.mime } : {},
    );
  }
  let width: number;
  let height: number;
  try {
    // Header only, so no pixel limit is needed here; the limit is applied to the figures below.
    const meta = await sharp(bytes, { limitInputPixels: false }).metadata();
    ({ width, height } = meta.autoOrient);
  } catch (error) {
    throw new ProblemError('undecodable-image', `The ${format.toUpperCase()} header cannot be read: ${(error as Error).message}`);
  }
  if (!(width > 0 && height > 0)) throw new ProblemError('undecodable-image', 'The image declares no dimensions');
  if (width * height > maxPixels) {
    throw new ProblemError('image-too-large', `${width}×${height} is ${width * height} pixels; the limit is ${maxPixels}`, {
      width,
      height,
      limitPixels: maxPixels,
    });
  }
  return { format, width, height };
}
