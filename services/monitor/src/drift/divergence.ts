/**
 * Distribution distances on binned data. PSI and the smoothing it needs live in shared/ (the
 * trainer's replay comparison uses them too) and are re-exported here for the monitor's modules.
 */
export { SMOOTHING, proportions, psi } from '@conveyor/shared/stats/psi';

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
