import { loadConfigOrExit } from '@conveyor/shared/config';
import { runService } from '@conveyor/shared/lifecycle';
import { createLogger } from '@conveyor/shared/logger';
import { MonitorConfig } from './config.js';
import { startMonitor } from './monitor.service.js';

const config = loadConfigOrExit(MonitorConfig);
const log = createLogger('monitor', config.LOG_LEVEL);
await runService(log, () => startMonitor(config, log), config.SHUTDOWN_BUDGET_MS);
