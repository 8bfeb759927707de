import path from 'node:path';
import { parseArgs } from 'node:util';
import { createLogger } from '@conveyor/shared/logger';
import { runPipeline } from './pipeline/pipeline.js';
import { readTrainConfig } from './pipeline/train-config.js';

/**
 * `train --config <file> [--out <dir>]`: runs the pipeline for one configuration and writes the
 * model folder (model.onnx, manifest.json, evaluation.json).
 */
const { values } = parseArgs({
  options: {
    config: { type: 'string', default: 'services/trainer/configs/cnn.json' },
    out: { type: 'string' },
  },
});
const log = createLogger('trainer', process.env.LOG_LEVEL ?? 'info', { sync: true });
const config = await readTrainConfig(values.config);
const out = path.resolve(values.out ?? path.join('models', config.model));
log.info({ config: config.name, out }, 'training');
await runPipeline(config, out, log);
