/**
 * The typed arrays one image needs, kept between images by whoever runs one image at a time (a
 * worker slot), so a job allocates no fresh megabytes: the tensor, and for the policies that need
 * them the resampled floats, their 8-bit copy and the luma plane (the align-corners resize without
 * a polarity writes the tensor directly). (sharp's decoded pixels are still a fresh Buffer per image:
 * sharp has no way to decode into a given buffer.) Not for images in parallel.
 */
export class Workspace {
  private readonly arrays = new Map<string, Float32Array | Uint8Array>();

  floats(role: 'resampled' | 'tensor', length: number): Float32Array {
    const held = this.arrays.get(role);
    if (held instanceof Float32Array && held.length === length) return held;
    const fresh = new Float32Array(length);
    this.arrays.set(role, fresh);
    return fresh;
  }

  bytes(role: 'pixels' | 'luma', length: number): Uint8Array {
    const held = this.arrays.get(role);
    if (held instanceof Uint8Array && held.length === length) return held;
    const fresh = new Uint8Array(length);
    this.arrays.set(role, fresh);
    return fresh;
  }
}
