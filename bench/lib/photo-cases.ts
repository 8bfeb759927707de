import sharp from 'sharp';
import { PHOTOS, readPhoto } from '../../scripts/models/moderation.js';

/**
 * Photos as phones and cameras send them, made from the scikit-image wheel's photographs
 * (chelsea and coffee: CC0; astronaut: public domain (NASA); see PHOTOS in
 * scripts/models/moderation.ts), never committed:
 *
 * - `plain`: re-encoded as JPEG q90 at their own size (34–71 KB), no ICC profile: the bench's photos.
 * - `srgb-icc`: the same JPEG with libvips' sRGB ICC profile embedded, as most camera and phone
 *   photos carry one (pixels unchanged: only the profile is added).
 * - `phone`: upscaled (Lanczos-3) to 12 MP (4000×3000 or 3000×3000 for the square one), JPEG q92
 *   with an sRGB profile, stored rotated with EXIF orientation 6 as a phone held upright writes
 *   it. Upscaled photos are smoother than a real 12 MP sensor's, which is stated wherever a
 *   figure comes from them.
 */
export type PhotoCase = 'plain' | 'srgb-icc' | 'phone';

export interface CasePhoto {
  readonly name: string;
  readonly case: PhotoCase;
  readonly bytes: Buffer;
  /** Upright size (after EXIF orientation), as the gateway reads it from the header. */
  readonly width: number;
  readonly height: number;
  readonly description: string;
}

export async function photoCase(kind: PhotoCase, quality = 90): Promise<CasePhoto[]> {
  const out: CasePhoto[] = [];
  for (const photo of PHOTOS) {
    const source = readPhoto(photo.name).bytes;
    let bytes: Buffer;
    if (kind === 'plain') bytes = await sharp(source).jpeg({ quality }).toBuffer();
    else if (kind === 'srgb-icc') bytes = await sharp(source).withIccProfile('srgb').jpeg({ quality }).toBuffer();
    else {
      const meta = await sharp(source).metadata();
      const square = meta.width === meta.height;
      const [w, h] = square ? [3000, 3000] : [4000, 3000];
      const upright = await sharp(source).resize({ width: w, height: h, fit: 'cover', kernel: 'lanczos3' }).raw().toBuffer();
      // Stored 90° counter-clockwise with orientation 6 ("rotate 90° clockwise to display").
      bytes = await sharp(upright, { raw: { width: w, height: h, channels: 3 } })
        .rotate(-90)
        .withIccProfile('srgb')
        .withExif({ IFD0: { Make: 'Conveyor bench', Model: 'upscaled scikit-image photo' } })
        .withMetadata({ orientation: 6 })
        .jpeg({ quality: 92 })
        .toBuffer();
    }
    const meta = await sharp(bytes).metadata();
    const { width, height } = meta.autoOrient;
    out.push({
      name: photo.name,
      case: kind,
      bytes,
      width,
      height,
      description: `${photo.name} (${photo.licence.split(',')[0]}), ${kind}: ${width}×${height} JPEG, ${(bytes.length / 1024).toFixed(0)} KB${meta.icc ? ', ICC profile' : ''}${(meta.orientation ?? 1) !== 1 ? `, EXIF orientation ${meta.orientation}` : ''}`,
    });
  }
  return out;
}
