import { destination, pino, stdTimeFunctions, type Logger } from 'pino';

export type { Logger };

/**
 * One JSON line per event. Every line carries the service name; callers scope further with
 * `log.child({ module })`, `{ requestId }`, `{ jobId, modelVersion }` so a request can be followed
 * from the gateway into the worker by grepping one id.
 */
export function createLogger(service: string, level: string, options: { sync?: boolean } = {}): Logger {
  return pino(
    {
      level,
      base: { service, pid: process.pid },
      timestamp: stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: { paths: ['req.headers.authorization', 'req.headers.cookie', '*.password'], censor: '[redacted]' },
    },
    // Synchronous writes for CPU-bound processes (training) that rarely yield to the event loop,
    // where buffered lines would only appear at the end.
    destination({ dest: 1, sync: options.sync ?? false }),
  );
}
