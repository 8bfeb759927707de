// Container health, per service (CONVEYOR_SERVICE): the gateway and the monitor answer /health;
// a worker has no HTTP port, so it proves liveness by refreshing HEALTH_FILE on every heartbeat.
import { statSync } from 'node:fs';

const service = process.env.CONVEYOR_SERVICE ?? 'gateway';
const ok = () => process.exit(0);
const fail = (why) => {
  console.error(`unhealthy: ${why}`);
  process.exit(1);
};
const probe = (port) =>
  fetch(`http://127.0.0.1:${port}/health`, { signal: AbortSignal.timeout(2500) }).then(
    (r) => (r.ok ? ok() : fail(`/health answered ${r.status}`)),
    (e) => fail(e.message),
  );

if (service === 'gateway') await probe(process.env.PORT ?? 8080);
else if (service === 'monitor') await probe(process.env.MONITOR_PORT ?? 9100);
else if (service === 'inference-worker') {
  const file = process.env.HEALTH_FILE ?? '/tmp/conveyor-healthy';
  const maxAge = 3 * Number(process.env.HEARTBEAT_INTERVAL_MS ?? 5000);
  try {
    const age = Date.now() - statSync(file).mtimeMs;
    if (age > maxAge) fail(`last heartbeat ${Math.round(age)} ms ago`);
    ok();
  } catch {
    fail(`no heartbeat file ${file}`);
  }
} else fail(`unknown service ${service}`);
