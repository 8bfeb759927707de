import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { createInterface } from 'node:readline';

/**
 * A compiled service of one checkout (`dir`), started with node from its dist entry, as the benches
 * that compare builds run them. Warnings and errors only are shown (the benches pass LOG_LEVEL=warn),
 * prefixed with the build's label, so a build that cannot start says why.
 */
export function startBuilt(label: string, dir: string, entry: string, env: Record<string, string>): ChildProcess {
  const child = spawn(process.execPath, [path.join(dir, entry)], {
    cwd: dir,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  createInterface({ input: child.stderr }).on('line', (line) => console.error(`[${label}] ${line}`));
  return child;
}

/** SIGTERM (the services' graceful shutdown), resolved once the process has exited. */
export async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  await exited;
}
