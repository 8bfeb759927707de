import { loadConfigOrExit } from '@conveyor/shared/config';
import { installCrashHandlers, installShutdown } from '@conveyor/shared/lifecycle';
import { createLogger } from '@conveyor/shared/logger';
import { MonitorConfig } from './config.js';
import { RegistryAccessError, startMonitor } from './monitor-service.js';

const config = loadConfigOrExit(MonitorConfig);
const log = createLogger('monitor', config.LOG_LEVEL);
const monitor = await startMonitor(config, log).catch(async (error: unknown) => {
  log.fatal({ err: error, registry: config.MLFLOW_TRACKING_URI }, (error as Error).message);
  await new Promise<void>((resolve) => log.flush(() => resolve()));
  process.exit(error instanceof RegistryAccessError ? error.exitCode : 1);
});
installCrashHandlers(log, installShutdown(log, monitor.shutdownSteps, config.SHUTDOWN_BUDGET_MS));
