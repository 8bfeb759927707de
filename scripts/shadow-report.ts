import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { loadConfigOrExit, mlflowCredentials, redisConfigShape } from '@conveyor/shared/config';
import { ModelName } from '@conveyor/shared/contract/common.contract';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { createLogger } from '@conveyor/shared/logger';
import { MlflowClient } from '@conveyor/shared/mlflow/client';
import { closeRedis, createRedis, waitForReady } from '@conveyor/shared/redis';
import { ROOT } from '../harness/service-process.js';
import { TrainerConfig } from '../services/trainer/src/config.js';
import { readPolicy } from '../services/trainer/src/registry/policy.js';
import { logReplayReport } from '../services/trainer/src/replay/replay-report.js';
import { runShadowReport } from '../services/trainer/src/replay/shadow-report.js';

/**
 * `make shadow-report MODEL=<name> [LIMIT=n] [SHADOW=<version>] [OUT=<dir>]`: the pairs workers in
 * shadow mode recorded on the shadow stream (REDIS_URL, REDIS_PREFIX), compared and reported as a
 * replay is, and judged with services/trainer/configs/promotion.json's replay thresholds. A shadow
 * that came from the registry (SHADOW_VERSION=<model>=<version or alias> with MLFLOW_TRACKING_URI)
 * gets the report and the figures on its registered version, as `make replay` does.
 * Exit 0: the gate passed; 1: it refused; 2: no report (no pairs, Redis unreachable).
 */
const { values } = parseArgs({
  options: {
    model: { type: 'string', default: 'digits' },
    limit: { type: 'string' },
    shadow: { type: 'string' },
    out: { type: 'string' },
  },
});
const env = loadConfigOrExit(TrainerConfig);
const { REDIS_URL, REDIS_PREFIX } = loadConfigOrExit(z.object(redisConfigShape));
const log = createLogger('shadow-report', env.LOG_LEVEL, { sync: true });
const model = ModelName.parse(values.model);
const limit = values.limit === undefined ? undefined : z.coerce.number().int().positive().parse(values.limit);
const date = new Date();
const redis = createRedis(REDIS_URL, 'producer', 'conveyor:shadow-report', log);
try {
  await waitForReady(redis, 10_000);
  const reportDir = path.resolve(
    values.out ??
      path.join(env.DATA_DIR, 'shadow-reports', `${model}-${values.shadow ?? 'latest'}-${date.toISOString().slice(0, 10)}`),
  );
  const outcome = await runShadowReport({
    redis,
    stream: redisKeys(REDIS_PREFIX).shadowStream,
    model,
    ...(values.shadow ? { shadowVersion: values.shadow } : {}),
    ...(limit ? { limit } : {}),
    policy: await readPolicy(),
    reportDir,
    command: `make shadow-report MODEL=${model}${limit ? ` LIMIT=${limit}` : ''}${values.shadow ? ` SHADOW=${values.shadow}` : ''}`,
  });
  if (outcome.registry && env.MLFLOW_TRACKING_URI) {
    const client = new MlflowClient(env.MLFLOW_TRACKING_URI, { credentials: mlflowCredentials(env) });
    const { name, version } = outcome.registry;
    const at = await logReplayReport(client, name, version, reportDir, outcome.comparison, outcome.decision, date);
    log.info({ name, version, artifacts: at }, 'report and figures put on the registered version');
  }
  console.log(await readFile(outcome.report.markdown, 'utf8'));
  console.log(`report: ${path.relative(ROOT, reportDir) || reportDir}`);
  process.exitCode = outcome.decision.passed ? 0 : 1;
} catch (error) {
  log.error({ err: error }, 'shadow report failed');
  process.exitCode = 2;
} finally {
  await closeRedis(redis);
}
