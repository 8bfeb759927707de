import type { ShadowState, ShadowStore } from '../shadow/shadow-store.js';

/**
 * What GET /drift shows of shadows beside drift: per served model and shadow version, its
 * agreement with production over the last closed window of WINDOW_SIZE pairs and over the window
 * filling now (provisional from MIN_WINDOW pairs, as drift's).
 */
export interface ShadowWindow {
  readonly size: number;
  /** Share of pairs whose top-1 labels agree; null for an empty window. */
  readonly top1Agreement: number | null;
  /** Mean |shadow's probability of production's label − production's confidence|; null for an empty window. */
  readonly meanConfidenceShift: number | null;
}

export interface ShadowView {
  readonly name: string;
  readonly shadow: { name: string; version: string };
  /** The production version of its newest pair. */
  readonly production: { name: string; version: string };
  readonly lastPairAt: string;
  /** Pairs counted since the shadow was first seen. */
  readonly pairs: number;
  readonly lastWindow: (ShadowWindow & { closedAt: string }) | null;
  readonly currentWindow: ShadowWindow & { status: 'insufficient_data' | 'provisional' };
}

const figures = (w: { size: number; agree: number; shift: number }): ShadowWindow => ({
  size: w.size,
  top1Agreement: w.size === 0 ? null : w.agree / w.size,
  meanConfidenceShift: w.size === 0 ? null : w.shift / w.size,
});

export function shadowView(state: ShadowState, minWindow: number): ShadowView {
  return {
    name: state.record.name,
    shadow: state.record.shadow,
    production: state.record.production,
    lastPairAt: state.record.lastPairAt,
    pairs: state.pairs,
    lastWindow: state.last ? { ...figures(state.last), closedAt: state.last.closedAt } : null,
    currentWindow: { status: state.open.size >= minWindow ? 'provisional' : 'insufficient_data', ...figures(state.open) },
  };
}

/** The agreement a dashboard should show: the last closed window's, else the filling one's once provisional. */
export function shownAgreement(view: ShadowView): number | null {
  if (view.lastWindow) return view.lastWindow.top1Agreement;
  return view.currentWindow.status === 'provisional' ? view.currentWindow.top1Agreement : null;
}

export class ShadowViews {
  constructor(
    private readonly store: Pick<ShadowStore, 'states'>,
    private readonly minWindow: number,
  ) {}

  async view(only?: string): Promise<ShadowView[]> {
    const states = await this.store.states();
    return states
      .filter((s) => only === undefined || s.record.name === only)
      .map((s) => shadowView(s, this.minWindow))
      .sort((a, b) => `${a.name}@${a.shadow.version}`.localeCompare(`${b.name}@${b.shadow.version}`));
  }
}
