import type { PreprocessSpec, ResizePolicy } from '@conveyor/shared/model/manifest';

/**
 * The common preprocessing recipes, by the name a model's documentation gives them:
 *
 * - `imagenet`: torchvision / timm / PaddleClas and most ImageNet classifiers: the shorter side to
 *   256/224 of the input, centre crop, pixels /255, then ImageNet's mean and std per channel.
 * - `inception`: Keras/TF-slim Inception, MobileNet and EfficientNet-lite style: the same crop,
 *   pixels scaled to [-1, 1] (x / 127.5 − 1).
 * - `unit`: pixels /255 in [0, 1], no mean or std, the image scaled to cover the input and centre-cropped.
 */
export const PRESETS = ['imagenet', 'inception', 'unit'] as const;
export type Preset = (typeof PRESETS)[number];

const IMAGENET_MEAN = [0.485, 0.456, 0.406];
const IMAGENET_STD = [0.229, 0.224, 0.225];

export function presetSpec(
  preset: Preset,
  channels: 1 | 3,
  options: { channelOrder?: 'rgb' | 'bgr'; resize?: ResizePolicy } = {},
): PreprocessSpec {
  // A gray model gets the channels' average (its training code would have had one value).
  const perChannel = (values: number[]) => (channels === 3 ? values : [values.reduce((a, b) => a + b, 0) / values.length]);
  const ones = (v: number) => Array.from({ length: channels }, () => v);
  const order = options.channelOrder === 'bgr' ? (values: number[]) => [...values].reverse() : (values: number[]) => values;
  const base = {
    color: channels === 3 ? ('rgb' as const) : ('gray' as const),
    polarity: 'none' as const,
    background: [255, 255, 255] as [number, number, number],
    ...(options.channelOrder === 'bgr' ? { channelOrder: 'bgr' as const } : {}),
  };
  switch (preset) {
    case 'imagenet':
      return {
        ...base,
        resize: options.resize ?? 'shorter-side-crop',
        cropFraction: 0.875,
        // Given in the model's channel order, as its training code lists them.
        normalize: { scale: 1 / 255, mean: perChannel(order(IMAGENET_MEAN)), std: perChannel(order(IMAGENET_STD)) },
      };
    case 'inception':
      return {
        ...base,
        resize: options.resize ?? 'shorter-side-crop',
        cropFraction: 0.875,
        normalize: { scale: 1 / 127.5, mean: ones(1), std: ones(1) },
      };
    case 'unit':
      return { ...base, resize: options.resize ?? 'cover', normalize: { scale: 1 / 255, mean: ones(0), std: ones(1) } };
  }
}
