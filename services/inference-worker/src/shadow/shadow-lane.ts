import { isDeepStrictEqual } from 'node:util';
import type { ModelRef } from '@conveyor/shared/contract/common.contract';
import type { CompletedResult } from '@conveyor/shared/contract/jobs.contract';
import type { ShadowEvent } from '@conveyor/shared/contract/shadow.contract';
import type { Logger } from '@conveyor/shared/logger';
import type { ModelManifest } from '@conveyor/shared/model/manifest';
import { preprocess, Workspace, type PreprocessOptions } from '@conveyor/shared/model/preprocess';
import { classify, topKFor, type LoadedModel } from '@conveyor/shared/model/runtime';
import type { CpuBudget } from './cpu-budget.js';
import type { ShadowCounts } from './shadow-metrics.js';

/**
 * One served model's shadow lane (docs/shadow.md): jobs production has answered and published are
 * offered here, and the lane runs its shadow model on them on its own time. `offer` is synchronous
 * and never throws: the job's processor returns at once and holds no BullMQ slot for the shadow.
 * At most one shadow run at a time; a few offers wait in a bounded backlog (more are dropped,
 * counted); a run starts only within the CPU share (else skipped, counted). Each run publishes the
 * pair of answers; a failure is logged and counted, never the job's.
 */

/** What the processor hands over once a completed result is committed and published. */
export interface ShadowInput {
  readonly result: CompletedResult;
  /** The production model's manifest (its preprocessing made `tensor`). */
  readonly manifest: ModelManifest;
  /** The preprocessed input: a view of the job's workspace, valid only during `offer`. */
  readonly tensor: Float32Array;
  /** The image as uploaded, for a shadow whose preprocessing differs. */
  readonly bytes: Buffer;
}

export interface ShadowHook {
  offer(input: ShadowInput): void;
}

/** The shadow model, loaded and warm. */
export interface ShadowModel {
  readonly model: Pick<LoadedModel, 'manifest' | 'run' | 'close'>;
  readonly ref: ModelRef;
  /** The registered version it was downloaded as (registry shadows). */
  readonly registry?: { readonly name: string; readonly version: string };
}

export interface ShadowLaneOptions {
  /** The served model's name. */
  readonly name: string;
  readonly sampleRate: number;
  readonly backlog: number;
  readonly budget: CpuBudget;
  readonly counts: ShadowCounts;
  readonly publish: (event: ShadowEvent) => Promise<unknown>;
  /** Preprocessing limits, as production's (the image passed them once already). */
  readonly preprocess: Omit<PreprocessOptions, 'workspace' | 'size'>;
  readonly topK: number | undefined;
  readonly log: Logger;
  /** Sampling's coin (injected by tests); uniform in [0, 1). */
  readonly random?: () => number;
  readonly now?: () => number;
}

/** A waiting shadow job: the production answer and what the shadow needs of the input. */
interface Pending {
  readonly result: CompletedResult;
  readonly input: { readonly tensor: Float32Array } | { readonly bytes: Buffer };
}

/** Same input tensor for both: same input geometry and the same preprocessing, field by field. */
export function sameInput(
  a: Pick<ModelManifest, 'input' | 'preprocess'>,
  b: Pick<ModelManifest, 'input' | 'preprocess'>,
): boolean {
  return isDeepStrictEqual(a.input, b.input) && isDeepStrictEqual(a.preprocess, b.preprocess);
}

export class ShadowLane implements ShadowHook {
  private readonly waiting: Pending[] = [];
  private running: Promise<void> | undefined;
  private closed = false;
  private readonly workspace = new Workspace();
  private readonly random: () => number;
  private readonly now: () => number;

  constructor(
    private readonly shadow: ShadowModel,
    private readonly options: ShadowLaneOptions,
  ) {
    this.random = options.random ?? Math.random;
    this.now = options.now ?? (() => performance.now());
  }

  get ref(): ModelRef {
    return this.shadow.ref;
  }

  offer(input: ShadowInput): void {
    try {
      if (this.closed || !(this.random() < this.options.sampleRate)) return;
      if (this.running && this.waiting.length >= this.options.backlog) {
        this.options.counts.outcome('dropped_busy');
        return;
      }
      if (!this.running && !this.options.budget.mayRun()) {
        this.options.counts.outcome('over_cpu_share');
        return;
      }
      // The tensor is a view of the job's workspace, reused by the next job: keep a copy (3 KB for
      // a digit); a shadow with another preprocessing keeps the bytes instead.
      const reuse = sameInput(input.manifest, this.shadow.model.manifest);
      this.waiting.push({
        result: input.result,
        input: reuse ? { tensor: Float32Array.from(input.tensor) } : { bytes: input.bytes },
      });
      this.kick();
    } catch (error) {
      this.options.counts.outcome('failed');
      this.options.log.warn({ err: error, jobId: input.result.id }, 'shadow offer failed; production is not affected');
    }
  }

  /** Stops taking offers, lets the run in hand finish, drops the backlog, closes the model. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.waiting.length = 0;
    await this.running;
    await this.shadow.model
      .close()
      .catch((error: unknown) => this.options.log.warn({ err: error }, 'closing the shadow model failed'));
  }

  /** Settles when nothing is running or waiting (tests, shutdown). */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  /** Starts draining the backlog unless a drain runs; one that ended as an offer arrived starts again. */
  private kick(): void {
    this.running ??= this.drain().finally(() => {
      this.running = undefined;
      if (this.waiting.length > 0 && !this.closed) this.kick();
    });
  }

  private async drain(): Promise<void> {
    for (let next = this.waiting.shift(); next; next = this.waiting.shift()) {
      if (this.closed) return;
      if (!this.options.budget.mayRun()) {
        this.options.counts.outcome('over_cpu_share');
        continue;
      }
      await this.runOne(next);
    }
  }

  private async runOne({ result, input }: Pending): Promise<void> {
    const { model } = this.shadow;
    const started = this.now();
    let charged = false;
    try {
      const tensor =
        'tensor' in input
          ? input.tensor
          : (
              await preprocess({ kind: 'encoded', bytes: input.bytes }, model.manifest, {
                ...this.options.preprocess,
                workspace: this.workspace,
                size: { width: result.input.width, height: result.input.height },
              })
            ).tensor;
      const inferring = this.now();
      const [output] = await model.run([tensor]);
      const inferenceMs = this.now() - inferring;
      const prediction = classify(output!.probabilities, model.manifest.labels, topKFor(model.manifest, this.options.topK));
      const spent = this.now() - started;
      this.options.budget.charge(spent);
      charged = true;
      this.options.counts.seconds(spent / 1000);
      await this.options.publish({
        kind: 'shadow',
        version: 1,
        jobId: result.id,
        at: new Date().toISOString(),
        name: this.options.name,
        production: { model: result.model, prediction: result.prediction, inferenceMs: result.timings.inferenceMs },
        shadow: {
          model: this.shadow.ref,
          prediction,
          inferenceMs: Math.round(inferenceMs * 1000) / 1000,
          ...(this.shadow.registry ? { registry: this.shadow.registry } : {}),
        },
      });
      this.options.counts.outcome('ran');
    } catch (error) {
      if (!charged) this.options.budget.charge(this.now() - started);
      this.options.counts.outcome('failed');
      this.options.log.warn(
        { err: error, jobId: result.id, shadow: this.shadow.ref },
        'shadow run failed; production is not affected',
      );
    }
  }
}
