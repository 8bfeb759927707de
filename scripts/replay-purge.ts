import { parseArgs } from 'node:util';
import { z } from 'zod';
import { env, loadConfigOrExit, logConfigShape } from '@conveyor/shared/config';
import { ModelName } from '@conveyor/shared/contract/common.contract';
import { createLogger } from '@conveyor/shared/logger';
import {
  describeLocation,
  parseReplayStoreLocation,
  purgeRecordedDays,
  replayS3Endpoint,
  retentionCutoff,
} from '@conveyor/shared/replay/replay-store';
import { openReplayStore } from '@conveyor/shared/replay/open-replay-store';

/**
 * `make replay-purge MODEL=<name|all> [BEFORE=<YYYY-MM-DD>] [ALL=1] [STORE=<uri>]`: deletes recorded
 * days from the live replay store (REPLAY_STORE, as the workers have it) for good — in a versioned S3
 * bucket every object version and delete marker under each day, not just the current objects. Without
 * BEFORE, the days past REPLAY_RETENTION_DAYS (default 30) go; ALL=1 deletes every day.
 */
const { values } = parseArgs({
  options: {
    model: { type: 'string', default: 'all' },
    before: { type: 'string' },
    all: { type: 'boolean', default: false },
    store: { type: 'string' },
  },
});
const config = loadConfigOrExit(
  z.object({
    ...logConfigShape,
    REPLAY_STORE: z.string().min(1).optional(),
    REPLAY_RETENTION_DAYS: env.int(30, 1, 3650, 'Days a recorded day is kept'),
  }),
);
const log = createLogger('replay-purge', config.LOG_LEVEL, { sync: true });
const uri = values.store ?? config.REPLAY_STORE;
if (!uri) {
  console.error('replay-purge: say which store: STORE=<s3://bucket/prefix | folder> or REPLAY_STORE');
  process.exit(2);
}
if (values.before !== undefined && values.all) {
  console.error('replay-purge: BEFORE and ALL=1 exclude each other');
  process.exit(2);
}
try {
  const location = parseReplayStoreLocation(uri);
  const store = await openReplayStore(location, { endpoint: replayS3Endpoint(process.env) });
  const models = values.model === 'all' ? undefined : [ModelName.parse(values.model)];
  const before = values.all ? undefined : (values.before ?? retentionCutoff(config.REPLAY_RETENTION_DAYS));
  const purged = await purgeRecordedDays(store, { models, before });
  log.info(
    {
      store: describeLocation(location),
      model: values.model,
      before: before ?? '(every day)',
      days: purged.length,
      objects: purged.reduce((sum, p) => sum + p.objects, 0),
    },
    'recorded days purged',
  );
  for (const p of purged) console.log(`${p.model}/${p.day}: ${p.objects} objects and versions deleted`);
} catch (error) {
  log.error({ err: error }, 'purge failed');
  process.exitCode = 1;
}
