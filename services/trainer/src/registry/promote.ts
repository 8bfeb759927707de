import type { KeyObject } from 'node:crypto';
import type { Logger } from '@conveyor/shared/logger';
import type { MlflowClient } from '@conveyor/shared/mlflow/client';
import { evaluateGate, tagsOf, type GateDecision } from './gate.js';
import type { PromotionPolicy } from './policy.js';
import { ALIASES } from './register.js';
import { releaseVersion } from './release.js';

/**
 * Promote: run the gate on a candidate (the `staging` alias unless a version is given) and, only
 * if every criterion passes, point `production` at it. Either way the decision and the figures
 * behind it are recorded on the candidate (tags and description). With the trainer's signing key,
 * a passing candidate is released (signed for its name and version, registry/release.ts) before
 * `production` moves: workers holding the public key serve only released versions.
 */
export async function promote(
  client: MlflowClient,
  modelName: string,
  policy: PromotionPolicy,
  options: { version?: string; signingKey?: KeyObject | undefined },
  log: Logger,
): Promise<GateDecision & { promoted: boolean; reason?: string }> {
  const candidate = options.version
    ? await client.getModelVersion(modelName, options.version)
    : await client.getVersionByAlias(modelName, ALIASES.staging);
  if (!candidate) throw new Error(`${modelName} has no version under the ${ALIASES.staging} alias: run \`make train\` first`);
  const production = await client.getVersionByAlias(modelName, ALIASES.production);
  if (production?.version === candidate.version) {
    log.info({ version: candidate.version }, 'the candidate is already in production');
    return {
      passed: true,
      promoted: false,
      reason: 'already in production',
      candidate: candidate.version,
      production: production.version,
      criteria: [],
    };
  }
  const decision = evaluateGate(policy, candidate, production);
  // Before any tag says "promoted": a candidate that cannot be released is not promoted at all.
  if (decision.passed && options.signingKey) await releaseVersion(client, candidate, options.signingKey, log);
  const at = new Date().toISOString();
  await client.setModelVersionTag(modelName, candidate.version, 'promotion.decision', decision.passed ? 'promoted' : 'rejected');
  await client.setModelVersionTag(modelName, candidate.version, 'promotion.evaluated_at', at);
  await client.setModelVersionTag(modelName, candidate.version, 'promotion.criteria', JSON.stringify(decision.criteria));
  await client.setModelVersionTag(modelName, candidate.version, 'promotion.compared_to', production?.version ?? 'none');
  const summary = decision.criteria.map((c) => `${c.passed ? '✓' : '✗'} ${c.id}: ${c.detail}`).join('\n');
  const base = tagsOf(candidate).config ?? '';
  await client.updateModelVersionDescription(
    modelName,
    candidate.version,
    `${base ? `${base}. ` : ''}Promotion ${decision.passed ? 'approved' : 'refused'} at ${at}:\n${summary}`,
  );
  if (!decision.passed) {
    log.warn({ version: candidate.version, criteria: decision.criteria.filter((c) => !c.passed) }, 'promotion refused');
    return { ...decision, promoted: false, reason: 'gate failed' };
  }
  await client.setModelVersionTag(modelName, candidate.version, 'promotion.previous_production', production?.version ?? '');
  await client.setAlias(modelName, ALIASES.production, candidate.version);
  await client.transitionStage(modelName, candidate.version, 'Production');
  if (production) await client.transitionStage(modelName, production.version, 'Archived');
  log.info({ version: candidate.version, previous: production?.version ?? null }, 'promoted to production');
  return { ...decision, promoted: true };
}
