import type { ChildProcess } from 'node:child_process';

/**
 * How the harness's servers (moto's S3, Jaeger) are stopped: SIGTERM, SIGKILL if still alive after
 * `graceMs`, and resolved once the process has exited. Harmless on one already gone.
 */
export function childStopper(child: ChildProcess, graceMs = 5000): () => Promise<void> {
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(timer);
  };
}
