import { loadConfigOrExit } from '@conveyor/shared/config';
import { runService } from '@conveyor/shared/lifecycle';
import { createLogger } from '@conveyor/shared/logger';
import { WorkerConfig } from './config.js';
import { startWorker } from './worker.service.js';

const config = loadConfigOrExit(WorkerConfig);
const log = createLogger('inference-worker', config.LOG_LEVEL);
// The budget is the drain's; the steps after it (heartbeat, models, Redis, metrics) get 3 s more.
await runService(log, () => startWorker(config, log), config.SHUTDOWN_BUDGET_MS + 3000);
