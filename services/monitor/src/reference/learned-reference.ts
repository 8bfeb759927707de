import type { Logger } from '@conveyor/shared/logger';
import { numericProfile, type ReferenceProfile } from '@conveyor/shared/model/reference-profile';
import type { MonitorStore } from '../store/monitor-store.js';
import type { Observation, TrackedModel } from '../store/store-records.js';
import type { ProfileSource } from './profile-source.js';

/**
 * The reference a model version's windows are compared with: the profile measured for it (shipped
 * in its folder or registry version, e.g. by `models profile`) or, for a version that has none, one
 * the monitor learns from its own first traffic.
 *
 * Learning: the first `windows` closed windows of such a version are not judged; their
 * observations are pooled (in Redis, so every monitor shares them) and, once `windows` ×
 * WINDOW_SIZE are in, summarised exactly as a measured profile is (reference deciles per numeric
 * feature, the predicted classes' counts; no embedding, which needs a PCA of real embeddings) and
 * kept for the version's life. Later windows are judged against it as against a measured one, so
 * drift means "traffic moved away from what this version saw first". Meanwhile no drift alert
 * can fire (the windows say `learning`); feedback-based quality alerts work as always. A reference of
 * 2 × 500 against windows of 500 sits at a PSI noise floor of ~0.03 (divergence.ts), well under the
 * 0.1 warn level.
 *
 * A placeholder profile (`placeholderProfile()`, dataset hash `synthetic`: five flat values, what
 * users were told to write by hand) is not a measurement: comparing real traffic with it gave a
 * PSI near 5 on every feature. It is treated as no profile.
 */
export interface LearningStatus {
  readonly have: number;
  readonly need: number;
}

export type ReferenceOrigin = 'measured' | 'learned';

export class References {
  constructor(
    private readonly measured: Pick<ProfileSource, 'get'>,
    private readonly store: MonitorStore,
    private readonly options: { readonly windows: number; readonly windowSize: number },
    private readonly log: Logger,
  ) {}

  /** Observations a learned reference is built from (0: never learn). */
  get need(): number {
    return this.options.windows * this.options.windowSize;
  }

  async get(model: TrackedModel): Promise<ReferenceProfile | undefined> {
    return (await this.resolve(model))?.profile;
  }

  async resolve(model: TrackedModel): Promise<{ profile: ReferenceProfile; origin: ReferenceOrigin } | undefined> {
    const measured = await this.measured.get(model);
    if (measured && !isPlaceholder(measured)) return { profile: measured, origin: 'measured' };
    const learned = await this.store.learnedProfile(model);
    return learned ? { profile: learned, origin: 'learned' } : undefined;
  }

  /** How far learning has come for a version without a reference; undefined when it does not learn. */
  async learning(model: TrackedModel): Promise<LearningStatus | undefined> {
    if (this.need === 0) return undefined;
    return { have: await this.store.learningSize(model), need: this.need };
  }

  /**
   * Adds a closed window's observations to the sample (the caller holds the version's lock) and,
   * once the sample is complete, builds and keeps the learned reference.
   */
  async learn(
    model: TrackedModel,
    observations: readonly Observation[],
  ): Promise<LearningStatus & { profile?: ReferenceProfile }> {
    const need = this.need;
    const have = await this.store.addToLearning(model, observations);
    if (have < need) return { have, need };
    const sample = await this.store.learningSample(model);
    const profile = learnedProfile(model, sample);
    await this.store.saveLearnedProfile(model, profile);
    this.log.info(
      { model: model.model, modelName: model.name, n: sample.length },
      'reference learned from the first windows; later windows are judged against it',
    );
    return { have: sample.length, need, profile };
  }
}

export function isPlaceholder(profile: ReferenceProfile): boolean {
  return profile.dataset.hash === 'synthetic';
}

/** A reference profile summarising observed traffic, as a measured one summarises its images. */
export function learnedProfile(model: TrackedModel, sample: readonly Observation[]): ReferenceProfile {
  if (sample.length === 0) throw new Error('cannot learn a reference from no observations');
  const names = [...new Set(sample.flatMap((o) => Object.keys(o.numeric)))].sort();
  const features: ReferenceProfile['features'] = {};
  for (const name of names) {
    const values = sample.map((o) => o.numeric[name]).filter((v): v is number => typeof v === 'number');
    if (values.length > 0) features[name] = numericProfile(values);
  }
  const tally = new Map<string, number>();
  for (const o of sample) tally.set(o.predictedClass, (tally.get(o.predictedClass) ?? 0) + 1);
  const categories = [...tally.keys()].sort();
  const times = sample.map((o) => o.at).sort();
  return {
    schema: 'conveyor.reference/v1',
    model: model.model,
    dataset: {
      hash: `learned:${times[0] ?? ''}/${times.at(-1) ?? ''}`,
      split: 'live traffic: the first windows',
      n: sample.length,
    },
    // Not known to the monitor (the workers resize every image to the model's input); unused by drift.
    image: { width: 1, height: 1, channels: 1 },
    features,
    predictedClass: { kind: 'categorical', n: sample.length, categories, counts: categories.map((c) => tally.get(c)!) },
    // No labels in live traffic: a learned reference says nothing about accuracy.
    quality: { accuracy: 0, atThreshold: [] },
  };
}
