import path from 'node:path';
import { z } from 'zod';
import { env } from '@conveyor/shared/config';
import { ModelName } from '@conveyor/shared/contract/common.contract';
import { parseModelUri } from '@conveyor/shared/mlflow/client';

/**
 * Shadow mode's settings (docs/shadow.md), validated with the rest of the worker's configuration:
 * which version shadows which served model, on what share of its jobs, within what CPU share.
 */
export const shadowConfigShape = {
  SHADOW_VERSION: z
    .string()
    .optional()
    .describe(
      'Shadow versions, `model=ref[,model=ref]`: the worker also runs the ref on a sampled share of the model’s jobs after answering the caller, and publishes both answers on the shadow stream (docs/shadow.md). The ref is, with MLFLOW_TRACKING_URI, a version number or alias of the model’s registered model (downloaded and verified like any registry version; an alias is resolved once, at start-up), else a model folder; unset: no shadow',
    ),
  SHADOW_SAMPLE_RATE: env.number(
    0.1,
    0,
    1,
    'Share of a shadowed model’s completed jobs offered to its shadow (0–1); the CPU share and the lane’s backlog may still skip some',
  ),
  SHADOW_CPU_SHARE: env.number(
    0.25,
    0.01,
    1,
    'Share of one core a model’s shadow may use, measured as its run time against wall time (0.25: a quarter of a core); runs over it are skipped and counted',
  ),
  SHADOW_NICENESS: env.int(
    19,
    0,
    19,
    'Niceness of a shadow’s inference thread (Linux; with INFERENCE_THREAD): 19 lets the kernel serve production’s threads first on a busy core; 0: the same priority as production',
  ),
  SHADOW_BACKLOG: env.int(
    4,
    0,
    1000,
    'Jobs waiting for a model’s shadow while it runs one; more are dropped and counted (the shadow never holds a job slot)',
  ),
  SHADOW_STREAM_MAXLEN: env.int(
    100_000,
    100,
    100_000_000,
    'Approximate length the shadow stream (the recorded pairs) is trimmed to',
  ),
};

/** Where one served model's shadow comes from. */
export type ShadowSource =
  | { readonly kind: 'folder'; readonly dir: string }
  /** `uri` is models:/<registered name>/<version> or models:/<registered name>@<alias>. */
  | { readonly kind: 'registry'; readonly uri: string };

export interface ShadowPlan {
  /** The served model it shadows (its serving name). */
  readonly model: ModelName;
  readonly source: ShadowSource;
}

const VERSION_OR_ALIAS = /^(\d+|[A-Za-z][A-Za-z0-9_-]*)$/;

interface ShadowFields {
  readonly SHADOW_VERSION?: string | undefined;
  readonly MLFLOW_TRACKING_URI?: string | undefined;
}

/**
 * SHADOW_VERSION split into entries, each checked: a served model (one of `served`, with the
 * registry model it follows), named once, and a ref of the right kind. Problems come back as
 * sentences for the configuration error; the plans only when there are none.
 */
export function planShadows(
  config: ShadowFields,
  served: readonly { readonly name: string; readonly uri: string }[],
): { plans: ShadowPlan[]; problems: string[] } {
  const raw = config.SHADOW_VERSION?.trim();
  if (!raw) return { plans: [], problems: [] };
  const plans: ShadowPlan[] = [];
  const problems: string[] = [];
  const names = served.map((s) => s.name);
  for (const entry of raw.split(',').map((e) => e.trim())) {
    const eq = entry.indexOf('=');
    if (eq <= 0 || eq === entry.length - 1) {
      problems.push(`"${entry}" is not <model>=<ref>`);
      continue;
    }
    const model = entry.slice(0, eq).trim();
    const ref = entry.slice(eq + 1).trim();
    const plan = served.find((s) => s.name === model);
    if (!ModelName.safeParse(model).success || !plan) {
      problems.push(`"${model}" is not a model this worker serves (MODELS: ${names.join(', ')})`);
      continue;
    }
    if (plans.some((p) => p.model === model)) {
      problems.push(`"${model}" is given a shadow twice`);
      continue;
    }
    if (config.MLFLOW_TRACKING_URI) {
      if (!VERSION_OR_ALIAS.test(ref)) {
        problems.push(`"${ref}" (for ${model}) is not a registry version number or alias`);
        continue;
      }
      const registered = parseModelUri(plan.uri).name;
      const uri = /^\d+$/.test(ref) ? `models:/${registered}/${ref}` : `models:/${registered}@${ref}`;
      if (uri === plan.uri) {
        problems.push(`${model}'s shadow ${uri} is what it serves already`);
        continue;
      }
      plans.push({ model, source: { kind: 'registry', uri } });
    } else {
      plans.push({ model, source: { kind: 'folder', dir: path.resolve(ref) } });
    }
  }
  return { plans, problems };
}
