import { fileTypeFromBuffer } from 'file-type';
import { disableTypes, imageSize } from 'image-size';
import type { ImageFormat } from '@conveyor/shared/contract/common.contract';
import { checkDimensions, type ImageLimits } from '@conveyor/shared/model/limits';
import { ProblemError } from '@conveyor/shared/problem';
import { checkJpegDensity } from './jpeg-density.js';

/**
 * The cheap checks the gateway makes before queueing: the type comes from the bytes (magic
 * numbers, never the client's Content-Type or file name), and the declared dimensions come from
 * the header, so a decompression bomb is refused without decoding a pixel. Both are read in
 * JavaScript (file-type, image-size): no decoder runs in the gateway at all. Full decoding (and
 * with it truncation) is the worker's job: doing it here too would double the CPU per image.
 */
export interface ImageFacts {
  readonly format: ImageFormat;
  /** The upright size (EXIF orientation applied). */
  readonly width: number;
  readonly height: number;
}

const FORMATS: Readonly<Record<string, ImageFormat>> = {
  'image/jpeg': 'jpeg',
  'image/png': 'png',
  'image/apng': 'png', // decoded as its first frame
  'image/webp': 'webp',
  'image/gif': 'gif', // first frame
  'image/tiff': 'tiff', // first page
  'image/avif': 'avif',
};

const ACCEPTED = 'JPEG, PNG, WebP, GIF, TIFF or AVIF';

// image-size knows many formats; only the accepted ones may be parsed (its `heif` reader covers AVIF).
disableTypes(['bmp', 'cur', 'dds', 'icns', 'ico', 'j2c', 'jp2', 'jxl', 'jxl-stream', 'ktx', 'pnm', 'psd', 'svg', 'tga']);

export async function inspectImage(bytes: Buffer, limits: ImageLimits): Promise<ImageFacts> {
  const type = await fileTypeFromBuffer(bytes);
  const format = type ? FORMATS[type.mime] : undefined;
  if (!format) {
    throw new ProblemError(
      'unsupported-media-type',
      type ? `${type.mime} is not accepted; send ${ACCEPTED}` : `The content is not a recognised image; send ${ACCEPTED}`,
      type ? { detected: type.mime } : {},
    );
  }
  let width: number;
  let height: number;
  try {
    const size = imageSize(bytes);
    // EXIF orientations 5–8 turn the image by 90°.
    const turned = (size.orientation ?? 1) >= 5;
    ({ width, height } = turned ? { width: size.height, height: size.width } : size);
  } catch (error) {
    throw new ProblemError('undecodable-image', `The ${format.toUpperCase()} header cannot be read: ${(error as Error).message}`);
  }
  if (!(width > 0 && height > 0)) throw new ProblemError('undecodable-image', 'The image declares no dimensions');
  checkDimensions(width, height, limits);
  if (format === 'jpeg') checkJpegDensity(bytes);
  return { format, width, height };
}
