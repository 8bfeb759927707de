/**
 * Distribution distances on binned data. Bins come from the reference alone; counts become
 * proportions with additive (Jeffreys, ½ per bin) smoothing so an empty bin never makes PSI
 * infinite (a failure users of other tools hit: probatus#115).
 */
export const SMOOTHING = 0.5;

export function proportions(counts: readonly number[], alpha = SMOOTHING): number[] {
  const n = counts.reduce((a, b) => a + b, 0);
  const k = counts.length;
  return counts.map((c) => (c + alpha) / (n + alpha * k));
}

/** Population stability index: Σ (cur − ref) · ln(cur / ref), over proportions that are all positive. */
export function psi(reference: readonly number[], current: readonly number[]): number {
  if (reference.length !== current.length) throw new Error(`PSI over ${reference.length} and ${current.length} bins`);
  let total = 0;
  for (let i = 0; i < reference.length; i++) {
    const r = reference[i]!;
    const c = current[i]!;
    if (!(r > 0 && c > 0)) throw new Error('PSI needs positive proportions (smooth the counts first)');
    total += (c - r) * Math.log(c / r);
  }
  return total;
}

/** Jensen–Shannon distance (square root of the divergence, base 2): 0 identical, 1 disjoint. */
export function jsDistance(p: readonly number[], q: readonly number[]): number {
  let divergence = 0;
  for (let i = 0; i < p.length; i++) {
    const a = p[i]!;
    const b = q[i]!;
    const m = (a + b) / 2;
    if (a > 0) divergence += 0.5 * a * Math.log2(a / m);
    if (b > 0) divergence += 0.5 * b * Math.log2(b / m);
  }
  return Math.sqrt(Math.max(0, divergence));
}

/**
 * The PSI that sampling noise alone produces, roughly: with k bins and n, m samples, PSI is about
 * χ²(k−1)·(1/n + 1/m). A threshold below this mean would fire on no drift at all.
 */
export function noiseFloor(bins: number, windowSize: number, referenceSize: number): number {
  return (bins - 1) * (1 / windowSize + 1 / referenceSize);
}
