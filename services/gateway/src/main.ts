import { loadConfigOrExit } from '@conveyor/shared/config';
import { runService } from '@conveyor/shared/lifecycle';
import { createLogger } from '@conveyor/shared/logger';
import { GatewayConfig } from './config.js';
import { startGateway } from './gateway.service.js';

const config = loadConfigOrExit(GatewayConfig);
const log = createLogger('gateway', config.LOG_LEVEL);
await runService(log, () => startGateway(config, log), config.SHUTDOWN_BUDGET_MS);
