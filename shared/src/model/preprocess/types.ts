import type { ImageDescriptors } from '../../contract/common.contract.js';

/** Uncompressed 8-bit pixels, as the trainer holds its dataset. */
export interface RawImage {
  readonly kind: 'raw';
  readonly data: Uint8Array;
  readonly width: number;
  readonly height: number;
  readonly channels: 1 | 3 | 4;
}

/** The bytes of an image file in one of the accepted formats (`ImageFormat`), as uploaded. */
export interface EncodedImage {
  readonly kind: 'encoded';
  readonly bytes: Buffer;
}

export type ImageInput = RawImage | EncodedImage;

export interface Prepared {
  /**
   * One image, laid out as the model's input (without the batch dimension). With a `workspace`,
   * a view of the workspace's memory: valid until the workspace is used for the next image.
   */
  readonly tensor: Float32Array;
  /** Published with every prediction for drift monitoring (the contract's schema). */
  readonly descriptors: ImageDescriptors;
}
