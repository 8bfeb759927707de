import type { ModelManifest } from '../model/manifest.js';
import type { ReferenceProfile } from '../model/reference-profile.js';
import { num, type ExpectationRegistry } from './suite.js';

/**
 * Expectations on a model folder, checked by the worker whenever it loads a model (the serving-time
 * sibling of the training data suite): the model must agree with the data it was trained on.
 */
export interface ModelFolderContext {
  readonly manifest: ModelManifest;
  readonly profile: ReferenceProfile | undefined;
  /** Width of the model's probability output, measured by a test inference. */
  readonly outputSize: number;
}

export const modelExpectations: ExpectationRegistry<ModelFolderContext> = {
  expect_reference_profile_to_exist: {
    describe: () => 'the folder ships the reference profile of its training data',
    run: (c) => ({ success: c.profile !== undefined, observed: { present: c.profile !== undefined } }),
  },
  expect_reference_profile_to_describe_this_model: {
    describe: () => 'the reference profile was measured with this very model',
    run: (c) => ({
      success:
        c.profile === undefined || (c.profile.model.name === c.manifest.name && c.profile.model.version === c.manifest.version),
      observed: {
        manifest: `${c.manifest.name}@${c.manifest.version}`,
        profile: c.profile ? `${c.profile.model.name}@${c.profile.model.version}` : null,
      },
    }),
  },
  expect_input_to_match_training_images: {
    describe: () => 'the declared input size and channels are those of the training images',
    run: (c) => {
      const { width, height, channels } = c.manifest.input;
      const image = c.profile?.image;
      return {
        success: image === undefined || (image.width === width && image.height === height && image.channels === channels),
        observed: {
          declared: `${width}×${height}×${channels}`,
          trained: image ? `${image.width}×${image.height}×${image.channels}` : null,
        },
      };
    },
  },
  expect_labels_to_match_output: {
    describe: () => 'one label per model output',
    run: (c) => ({
      success: c.manifest.labels.length === c.outputSize,
      observed: { labels: c.manifest.labels.length, outputs: c.outputSize },
    }),
  },
  expect_label_count_between: {
    describe: (p) => `between ${String(p.min)} and ${String(p.max)} labels`,
    run: (c, p) => ({
      success: c.manifest.labels.length >= num(p, 'min') && c.manifest.labels.length <= num(p, 'max'),
      observed: { labels: c.manifest.labels.length },
    }),
  },
  expect_reference_quality_at_least: {
    describe: (p) => `validation accuracy in the reference profile of at least ${String(p.min)}`,
    run: (c, p) => ({
      success: c.profile?.quality === undefined || c.profile.quality.accuracy >= num(p, 'min'),
      observed: { accuracy: c.profile?.quality?.accuracy ?? null },
    }),
  },
};
