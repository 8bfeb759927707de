/**
 * mulberry32: a small seeded generator of uniforms in [0, 1), the one used wherever a test, a
 * benchmark or a build script needs "random" numbers that are the same on every machine and every
 * run (drift windows, weights of a stand-in model, the crops behind the committed moderation
 * profile; changing it changes that profile). Not for anything secret.
 */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
