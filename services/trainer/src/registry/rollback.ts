import type { Logger } from '@conveyor/shared/logger';
import type { MlflowClient } from '@conveyor/shared/mlflow/client';
import { tagsOf } from './gate.js';
import { ALIASES } from './register.js';

/**
 * Rollback: point `production` back at the version it replaced (recorded on each promoted version
 * as `promotion.previous_production`). Repeated rollbacks walk further back.
 */
export async function rollback(client: MlflowClient, modelName: string, log: Logger): Promise<{ from: string; to: string }> {
  const current = await client.getVersionByAlias(modelName, ALIASES.production);
  if (!current) throw new Error(`${modelName} has no ${ALIASES.production} version to roll back`);
  const previous = tagsOf(current)['promotion.previous_production'];
  if (!previous)
    throw new Error(`${modelName} v${current.version} replaced no earlier production version: nothing to roll back to`);
  await client.setAlias(modelName, ALIASES.production, previous);
  await client.transitionStage(modelName, previous, 'Production');
  await client.transitionStage(modelName, current.version, 'Archived');
  await client.setModelVersionTag(modelName, current.version, 'rollback.rolled_back_at', new Date().toISOString());
  log.info({ from: current.version, to: previous }, 'rolled back production');
  return { from: current.version, to: previous };
}
