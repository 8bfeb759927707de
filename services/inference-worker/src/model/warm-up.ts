import { ModelLoadError, type LoadedModel, type LoadOptions } from '@conveyor/shared/model/runtime';
import { loadCheckedModel } from '@conveyor/shared/validation/model-folder-checks';

/**
 * A model is announced (listed in the worker's heartbeat, so gateways route to it) only once it has
 * answered: loading runs it once on a synthetic input, zeros of its manifest's input shape
 * (`LoadedModel.warmUp`), and that answer must be one finite probability per label. The run pays
 * onnxruntime's first-run allocations before a caller would, and a model that loads but cannot
 * answer (a broken export, an output that is NaN on a blank image) is refused before any job
 * reaches it, not on the first request.
 */
export interface WarmModel {
  readonly model: LoadedModel;
  /** How long the synthetic run took. */
  readonly warmUpMs: number;
}

/** Refuses a model whose warm-up answer is not one finite probability per label. */
export function checkWarmUp(model: LoadedModel): number {
  const { probabilities, ms } = model.warmUp;
  const labels = model.manifest.labels.length;
  const finite = probabilities.every(Number.isFinite);
  if (probabilities.length !== labels || !finite) {
    throw new ModelLoadError(
      `${model.dir}: zeros of the input shape gave ${probabilities.length} values${finite ? '' : ', not all finite'}; the manifest has ${labels} labels`,
    );
  }
  return ms;
}

/** Loads a model folder (checked by the model-folder suite) warm; closes it again if the warm-up answer is refused. */
export async function loadWarmModel(dir: string, options: LoadOptions = {}): Promise<WarmModel> {
  const model = await loadCheckedModel(dir, options);
  try {
    return { model, warmUpMs: checkWarmUp(model) };
  } catch (error) {
    await model.close();
    throw error;
  }
}
