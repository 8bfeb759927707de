/**
 * Population stability index on binned data, shared by the drift monitor and the trainer's replay
 * comparison (services never import each other). Bins come from the reference alone; counts become
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
