import { ProblemError } from '../problem.js';

/**
 * The dimensions an image may declare. The pixel limit stops decompression bombs; the side and
 * aspect limits stop images that are cheap to send and dear to decode (libvips works a row at a
 * time, and a 1 × 40,000,000 PNG of 78 KB held a worker for ~8 s where a normal image takes 20 ms).
 */
export interface ImageLimits {
  readonly maxPixels: number;
  readonly maxSide: number;
  readonly maxAspectRatio: number;
}

export function checkDimensions(width: number, height: number, limits: ImageLimits): void {
  const extra = { width, height };
  if (width * height > limits.maxPixels) {
    throw new ProblemError(
      'image-too-large',
      `${width}×${height} is ${width * height} pixels; the limit is ${limits.maxPixels}`,
      {
        ...extra,
        limitPixels: limits.maxPixels,
      },
    );
  }
  const longer = Math.max(width, height);
  if (longer > limits.maxSide) {
    throw new ProblemError(
      'image-too-large',
      `${width}×${height} has a side of ${longer} pixels; the limit is ${limits.maxSide}`,
      {
        ...extra,
        limitSide: limits.maxSide,
      },
    );
  }
  const ratio = longer / Math.min(width, height);
  if (ratio > limits.maxAspectRatio) {
    throw new ProblemError(
      'image-too-large',
      `${width}×${height} is ${Math.round(ratio)} times longer than wide; the limit is ${limits.maxAspectRatio}`,
      { ...extra, limitAspectRatio: limits.maxAspectRatio },
    );
  }
}
