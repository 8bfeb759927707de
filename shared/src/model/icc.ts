import { inflateSync } from 'node:zlib';

/**
 * Embedded ICC profiles, read from the file's own bytes (no libvips call), and the test for an
 * sRGB one. sharp converts every image with an embedded profile to sRGB (an lcms transform of
 * every pixel: ~4 ms for a 640×427 photo); when the embedded profile *is* sRGB that transform
 * changes no pixel, and most camera and phone photos carry such a profile. A profile is taken as
 * sRGB only when it is a matrix/TRC RGB profile whose colorants are sRGB's (D50-adapted, within
 * SRGB_TOLERANCE) and whose three tone curves are sRGB's curve (parametric type 3/4 with sRGB's
 * parameters, or a sampled table within half a level of it), without lookup tables (A2B/B2A/D2B
 * tags, which lcms would use instead of the matrix). Anything else (Display P3, Adobe RGB, a
 * gamma-2.2 "sRGB-like" profile, CMYK, an unreadable profile) is still applied.
 */
export function embeddedIccProfile(bytes: Buffer): Buffer | undefined {
  try {
    if (bytes[0] === 0xff && bytes[1] === 0xd8) return jpegIcc(bytes);
    if (bytes.readUInt32BE(0) === 0x89504e47) return pngIcc(bytes);
    if (bytes.toString('latin1', 0, 4) === 'RIFF' && bytes.toString('latin1', 8, 12) === 'WEBP') return webpIcc(bytes);
  } catch {
    // A malformed container: let libvips decide (and refuse it) as before.
  }
  return undefined;
}

/** JPEG: APP2 segments "ICC_PROFILE\0", seq, count, data — concatenated in sequence order. */
function jpegIcc(bytes: Buffer): Buffer | undefined {
  const chunks: { seq: number; data: Buffer }[] = [];
  let at = 2;
  while (at + 4 <= bytes.length) {
    if (bytes[at] !== 0xff) return undefined;
    const marker = bytes[at + 1]!;
    if (marker === 0xff) {
      at++; // fill byte
      continue;
    }
    if (marker === 0xda || marker === 0xd9) break; // start of scan / end of image: no more headers
    const length = bytes.readUInt16BE(at + 2);
    if (marker === 0xe2 && length > 16 && bytes.toString('latin1', at + 4, at + 16) === 'ICC_PROFILE\0') {
      chunks.push({ seq: bytes[at + 16]!, data: bytes.subarray(at + 18, at + 2 + length) });
    }
    at += 2 + length;
  }
  if (chunks.length === 0) return undefined;
  return Buffer.concat(chunks.sort((a, b) => a.seq - b.seq).map((c) => c.data));
}

/** PNG: the iCCP chunk (name, NUL, method 0, zlib data), before the first IDAT. */
function pngIcc(bytes: Buffer): Buffer | undefined {
  let at = 8;
  while (at + 8 <= bytes.length) {
    const length = bytes.readUInt32BE(at);
    const type = bytes.toString('latin1', at + 4, at + 8);
    if (type === 'IDAT' || type === 'IEND') return undefined;
    if (type === 'iCCP') {
      const data = bytes.subarray(at + 8, at + 8 + length);
      const nul = data.indexOf(0);
      return inflateSync(data.subarray(nul + 2), { maxOutputLength: 4 * 1024 * 1024 });
    }
    at += 12 + length;
  }
  return undefined;
}

/** WebP (extended format): the ICCP chunk. */
function webpIcc(bytes: Buffer): Buffer | undefined {
  let at = 12;
  while (at + 8 <= bytes.length) {
    const type = bytes.toString('latin1', at, at + 4);
    const length = bytes.readUInt32LE(at + 4);
    if (type === 'ICCP') return bytes.subarray(at + 8, at + 8 + length);
    if (type === 'VP8 ' || type === 'VP8L') return undefined;
    at += 8 + length + (length & 1);
  }
  return undefined;
}

/** sRGB's primaries adapted to D50 (the ICC connection space), as every sRGB profile records them. */
const SRGB_COLORANTS: Record<string, readonly [number, number, number]> = {
  rXYZ: [0.4361, 0.2225, 0.0139],
  gXYZ: [0.3851, 0.7169, 0.0971],
  bXYZ: [0.1431, 0.0606, 0.7141],
};
/** Published sRGB profiles (HP's v2, ICC's v4, libvips', Apple's) differ from the above by < 0.001. */
const SRGB_TOLERANCE = 0.002;

/** The sRGB transfer function, encoded value (0–1) → linear light. */
function srgbToLinear(v: number): number {
  return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
}

export function isSrgbProfile(icc: Buffer): boolean {
  try {
    if (icc.length < 132 || icc.toString('latin1', 36, 40) !== 'acsp') return false;
    if (icc.toString('latin1', 16, 20) !== 'RGB ' || icc.toString('latin1', 20, 24) !== 'XYZ ') return false;
    const tags = new Map<string, Buffer>();
    const count = icc.readUInt32BE(128);
    for (let i = 0; i < count; i++) {
      const entry = 132 + 12 * i;
      const offset = icc.readUInt32BE(entry + 4);
      const size = icc.readUInt32BE(entry + 8);
      if (offset + size > icc.length) return false;
      tags.set(icc.toString('latin1', entry, entry + 4), icc.subarray(offset, offset + size));
    }
    for (const sig of tags.keys()) if (/^(A2B|B2A|D2B|B2D)/.test(sig)) return false;
    for (const [sig, expected] of Object.entries(SRGB_COLORANTS)) {
      const tag = tags.get(sig);
      if (!tag || tag.toString('latin1', 0, 4) !== 'XYZ ') return false;
      for (let k = 0; k < 3; k++) if (Math.abs(tag.readInt32BE(8 + 4 * k) / 65536 - expected[k]!) > SRGB_TOLERANCE) return false;
    }
    return ['rTRC', 'gTRC', 'bTRC'].every((sig) => {
      const tag = tags.get(sig);
      return tag !== undefined && isSrgbCurve(tag);
    });
  } catch {
    return false;
  }
}

function isSrgbCurve(tag: Buffer): boolean {
  const type = tag.toString('latin1', 0, 4);
  if (type === 'para') {
    const fn = tag.readUInt16BE(8);
    if (fn !== 3 && fn !== 4) return false;
    const p = Array.from({ length: fn === 3 ? 5 : 7 }, (_, k) => tag.readInt32BE(12 + 4 * k) / 65536);
    const [g, a, b, c, d] = p as [number, number, number, number, number];
    const close = (x: number, y: number) => Math.abs(x - y) < 2e-3;
    return (
      close(g, 2.4) &&
      close(a, 1 / 1.055) &&
      close(b, 0.055 / 1.055) &&
      close(c, 1 / 12.92) &&
      close(d, 0.04045) &&
      (fn === 3 || (Math.abs(p[5]!) < 1e-3 && Math.abs(p[6]!) < 1e-3))
    );
  }
  if (type === 'curv') {
    const n = tag.readUInt32BE(8);
    if (n < 2) return false; // identity or a pure gamma: not sRGB's curve
    for (let i = 0; i < n; i++) {
      const value = tag.readUInt16BE(12 + 2 * i) / 65535;
      if (Math.abs(value - srgbToLinear(i / (n - 1))) > 0.5 / 255) return false;
    }
    return true;
  }
  return false;
}
