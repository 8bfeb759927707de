import { parseArgs } from 'node:util';
import { redisKeys } from '@conveyor/shared/contract/redis-keys';
import { createLogger } from '@conveyor/shared/logger';
import { createRedis, waitForReady } from '@conveyor/shared/redis';
import { ApiKeyStore, MAX_WEIGHT, Scope, SCOPES } from './access/api-keys.js';
import { isPriority, PRIORITIES } from './http/priority.js';

/**
 * `make api-key NAME=<name> SCOPES=predict,feedback WEIGHT=3 MAX_PRIORITY=high` (or, in a container, `node services/gateway/dist/api-key.js --name <name> --scopes predict --weight 3 --max-priority high`): creates an API key in the Redis the gateways
 * use (REDIS_URL, REDIS_PREFIX) and prints it — once: only its SHA-256 is stored.
 * `make api-key LIST=1` lists the keys (never the secrets); `make api-key REVOKE=<id>` removes one.
 */
const { values } = parseArgs({
  options: {
    name: { type: 'string' },
    scopes: { type: 'string', default: 'predict' },
    weight: { type: 'string', default: '1' },
    'max-priority': { type: 'string', default: 'normal' },
    list: { type: 'boolean', default: false },
    revoke: { type: 'string' },
  },
});
const url = process.env.REDIS_URL;
if (!url) {
  console.error('Set REDIS_URL to the Redis the gateways use (and REDIS_PREFIX if it is not the default).');
  process.exit(2);
}
// Through the services' own factory, so every REDIS_URL form they accept (cluster, sentinel) works here too.
const redis = createRedis(url, 'producer', 'conveyor:api-key', createLogger('api-key', 'warn'));
await waitForReady(redis, 10_000);
const store = new ApiKeyStore(redis, redisKeys(process.env.REDIS_PREFIX ?? 'conveyor').apiKeys);
try {
  if (values.list) {
    for (const key of await store.list())
      console.log(
        `${key.id}  ${key.name}  ${key.scopes.join(',')}  weight ${key.weight}  max priority ${key.maxPriority}  ${key.createdAt}`,
      );
  } else if (values.revoke) {
    console.log((await store.revoke(values.revoke)) ? `revoked ${values.revoke}` : `no key ${values.revoke}`);
  } else {
    if (!values.name) throw new Error('give the key a name: NAME=<who uses it>');
    const scopes = values.scopes.split(',').map((s) => Scope.parse(s.trim()));
    const weight = Number(values.weight);
    if (!Number.isInteger(weight) || weight < 1 || weight > MAX_WEIGHT) {
      throw new Error(`WEIGHT is a whole number from 1 to ${MAX_WEIGHT} (its share of worker time against weight 1)`);
    }
    const maxPriority = values['max-priority'];
    if (!isPriority(maxPriority)) {
      throw new Error(
        `MAX_PRIORITY is one of ${PRIORITIES.join(', ')} (the highest Prefer: priority= its requests are served at)`,
      );
    }
    const { id, key } = await store.create(values.name, scopes, weight, maxPriority);
    console.error(
      `created key ${id} "${values.name}" with scopes ${scopes.join(',')} (of ${SCOPES.join(', ')}), weight ${weight} and max priority ${maxPriority}; it is shown once:`,
    );
    console.log(key);
  }
} finally {
  redis.disconnect();
}
