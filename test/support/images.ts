import sharp from 'sharp';
import { pngHeaderClaiming } from '../../harness/png.js';
import { loadMnist, splitDataset, type Dataset, type Split } from '../../services/trainer/src/pipeline/ingest.js';
import { readManifest } from '@conveyor/shared/model/runtime';

/** MNIST digits of the committed model's held-out test split, and ways to render them. */
let cache: { dataset: Dataset; split: Split } | undefined;

export async function heldOutDigits(): Promise<{ dataset: Dataset; split: Split }> {
  if (cache) return cache;
  const manifest = await readManifest('models/digits');
  // The split the model was trained with, as its manifest records it.
  const split = manifest.training.split as { seed: number; train: number; validation: number };
  const dataset = loadMnist();
  cache = { dataset, split: splitDataset(dataset, split, split.seed) };
  return cache;
}

export function digitPng(pixels: Uint8Array, side = 28): Promise<Buffer> {
  return sharp(pixels, { raw: { width: side, height: side, channels: 1 } })
    .png()
    .toBuffer();
}

/** A scan-like rendering: dark ink on light paper, upscaled, as a JPEG. */
export function scannedDigit(pixels: Uint8Array, scale = 4): Promise<Buffer> {
  const inverted = Uint8Array.from(pixels, (v) => 255 - Math.round(v * 0.85));
  return sharp(inverted, { raw: { width: 28, height: 28, channels: 1 } })
    .resize(28 * scale, 28 * scale, { kernel: 'cubic' })
    .jpeg({ quality: 90 })
    .toBuffer();
}

/** Black strokes on a transparent canvas, as a drawing app exports them. */
export function transparentDigit(pixels: Uint8Array): Promise<Buffer> {
  const rgba = new Uint8Array(28 * 28 * 4);
  pixels.forEach((v, i) => rgba.set([0, 0, 0, v], i * 4));
  return sharp(rgba, { raw: { width: 28, height: 28, channels: 4 } })
    .resize(84, 84)
    .png()
    .toBuffer();
}

/** Stored rotated 90° with an EXIF orientation that tells viewers to turn it upright. */
export function exifRotatedDigit(pixels: Uint8Array): Promise<Buffer> {
  return sharp(pixels, { raw: { width: 28, height: 28, channels: 1 } })
    .resize(56, 56)
    .rotate(-90)
    .withMetadata({ orientation: 6 })
    .jpeg({ quality: 95 })
    .toBuffer();
}

export function solidImage(
  width: number,
  height: number,
  rgb: [number, number, number],
  format: 'png' | 'jpeg' = 'png',
): Promise<Buffer> {
  const img = sharp({ create: { width, height, channels: 3, background: { r: rgb[0], g: rgb[1], b: rgb[2] } } });
  return (format === 'png' ? img.png() : img.jpeg()).toBuffer();
}

/** A PNG whose header claims `width`×`height` but which carries no real pixel data. */
export const pngBombHeader = pngHeaderClaiming;

/**
 * A held-out digit in every accepted format, each written by sharp: dark ink on light paper at
 * 3× (a small scan), so the formats' own quirks (palette, alpha, pages) are exercised. The GIF is
 * animated (the digit first, then a blank frame) and the TIFF has two pages (the digit first):
 * Conveyor reads the first frame or page.
 */
export async function digitInEveryFormat(
  pixels: Uint8Array,
): Promise<Record<'jpeg' | 'png' | 'webp' | 'gif' | 'tiff' | 'avif', Buffer>> {
  const ink = Uint8Array.from(pixels, (v) => 255 - v);
  const rgb = await sharp(ink, { raw: { width: 28, height: 28, channels: 1 } })
    .resize(84, 84, { kernel: 'cubic' })
    .toColourspace('srgb')
    .raw()
    .toBuffer();
  const image = () => sharp(rgb, { raw: { width: 84, height: 84, channels: 3 } });
  const blank = Buffer.alloc(rgb.length, 255);
  const pages = sharp(Buffer.concat([rgb, blank]), { raw: { width: 84, height: 168, channels: 3, pageHeight: 84 } });
  return {
    jpeg: await image().jpeg({ quality: 90 }).toBuffer(),
    png: await image().png().toBuffer(),
    webp: await image().webp({ quality: 90 }).toBuffer(),
    gif: await pages
      .clone()
      .gif({ delay: [100, 100] })
      .toBuffer(),
    tiff: await pages.clone().tiff({ compression: 'lzw' }).toBuffer(),
    avif: await image().avif({ quality: 80 }).toBuffer(),
  };
}

/** A real 28×28 JPEG whose frame header was patched to declare `side`×`side`: the data ends early. */
export async function jpegDeclaringMore(side: number): Promise<Buffer> {
  const bytes = Buffer.from(
    await sharp({ create: { width: 28, height: 28, channels: 3, background: '#777' } })
      .jpeg()
      .toBuffer(),
  );
  for (let i = 0; i + 9 < bytes.length; i++) {
    // SOF0/SOF2: FF C0|C2, length (2), precision (1), height (2), width (2).
    if (bytes[i] === 0xff && (bytes[i + 1] === 0xc0 || bytes[i + 1] === 0xc2)) {
      bytes.writeUInt16BE(side, i + 5);
      bytes.writeUInt16BE(side, i + 7);
      return bytes;
    }
  }
  throw new Error('no frame header found');
}

/** A real PNG one pixel wide: tiny to send, slow to decode (libvips works a row at a time). */
export function thinStrip(height: number): Promise<Buffer> {
  return sharp(Buffer.alloc(height, 128), { raw: { width: 1, height, channels: 1 } })
    .png()
    .toBuffer();
}
