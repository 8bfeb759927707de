import type { ModelRef } from '@conveyor/shared/contract/common.contract';
import type { Logger } from '@conveyor/shared/logger';
import type { ModelManifest } from '@conveyor/shared/model/manifest';
import type { LoadedModel } from '@conveyor/shared/model/runtime';

/**
 * Holds the model the worker serves and swaps it without dropping a request: each job leases the
 * model it started with and keeps it to the end; a replaced model is closed only when its last
 * lease is returned. New jobs get the new model at once.
 */
export interface ModelLease {
  readonly model: LoadedModel;
  readonly ref: ModelRef;
  release(): void;
}

interface Slot {
  readonly model: LoadedModel;
  readonly ref: ModelRef;
  /** When it started serving (ISO). */
  readonly since: string;
  leases: number;
  retired: boolean;
}

export class ModelHost {
  private active: Slot | undefined;

  constructor(private readonly log: Logger) {}

  get ref(): ModelRef | undefined {
    return this.active?.ref;
  }

  /** The manifest of the model served now (undefined before the first is loaded). */
  get manifest(): ModelManifest | undefined {
    return this.active?.model.manifest;
  }

  /** When the model served now started serving (ISO). */
  get since(): string | undefined {
    return this.active?.since;
  }

  get loaded(): boolean {
    return this.active !== undefined;
  }

  acquire(): ModelLease {
    const slot = this.active;
    if (!slot) throw new Error('no model loaded yet');
    slot.leases++;
    let released = false;
    return {
      model: slot.model,
      ref: slot.ref,
      release: () => {
        if (released) return;
        released = true;
        slot.leases--;
        if (slot.retired && slot.leases === 0) void this.close(slot);
      },
    };
  }

  /** Serves `model` from now on; the previous one closes once its in-flight jobs are done. */
  replace(model: LoadedModel, ref: ModelRef): void {
    const previous = this.active;
    this.active = { model, ref, since: new Date().toISOString(), leases: 0, retired: false };
    if (!previous) return;
    previous.retired = true;
    this.log.info({ from: previous.ref, to: ref, inFlight: previous.leases }, 'model swapped');
    if (previous.leases === 0) void this.close(previous);
  }

  /** Closes `slot`, or the active model (at shutdown) when none is given. */
  async close(slot?: Slot): Promise<void> {
    const target = slot ?? this.active;
    if (!target) return;
    if (!slot) this.active = undefined;
    try {
      await target.model.close();
    } catch (error) {
      this.log.warn({ err: error, model: target.ref }, 'closing a model failed');
    }
  }
}
