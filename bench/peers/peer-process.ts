import { spawn } from 'node:child_process';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { ROOT } from '../../harness/service-process.js';
import { ensureVenv } from '../../harness/venv.js';
import { processTree } from '../lib/process-cpu.js';

/**
 * The Python peers of bench/compare.bench.ts, each in its own pinned venv (harness/venv.sh bench-fastapi|bench-bentoml),
 * started as their users would start them and stopped with their whole process tree.
 *
 * - fastapi: `uvicorn app:app --workers 2` (uvloop, httptools with TCP_NODELAY: see nodelay.py).
 * - bentoml: `bentoml serve service:Classifier` (2 workers, adaptive batching: see service.py).
 */
export type PeerName = 'fastapi' | 'bentoml';

export interface PeerOptions {
  readonly modelDir: string;
  readonly port: number;
  /** Scratch space (BentoML's home). */
  readonly dataDir: string;
  readonly workers?: number;
  /** BentoML's batcher: the largest batch, and the latency budget beyond which it sheds requests (503). */
  readonly maxBatch?: number;
  readonly maxLatencyMs?: number;
}

export interface PeerProcess {
  readonly name: PeerName;
  readonly pid: number;
  readonly port: number;
  stop(): Promise<void>;
}

/** Creates or reuses the peer's venv (idempotent) and returns its directory. */
export function ensurePeerVenv(name: PeerName): string {
  return ensureVenv(`bench-${name}`);
}

export async function startPeer(name: PeerName, options: PeerOptions): Promise<PeerProcess> {
  const venv = ensurePeerVenv(name);
  const workers = options.workers ?? 2;
  const cwd = path.join(ROOT, 'bench', 'peers', name);
  const env: Record<string, string> = {
    ...(process.env as Record<string, string>),
    MODEL_DIR: options.modelDir,
    PYTHONUNBUFFERED: '1',
    PYTHONDONTWRITEBYTECODE: '1',
    PYTHONPATH: cwd,
  };
  let command: string;
  let args: string[];
  let readyLine: RegExp;
  let readyPath: string;
  switch (name) {
    case 'fastapi':
      command = path.join(venv, 'bin', 'uvicorn');
      args = ['app:app', '--host', '127.0.0.1', '--port', String(options.port), '--workers', String(workers)];
      args.push('--loop', 'uvloop', '--http', 'nodelay:HttpToolsNoDelay', '--no-access-log', '--log-level', 'info');
      readyLine = /Application startup complete/;
      readyPath = '/ready';
      break;
    case 'bentoml':
      command = path.join(venv, 'bin', 'bentoml');
      args = ['serve', 'service:Classifier', '--host', '127.0.0.1', '--port', String(options.port)];
      Object.assign(env, {
        BENTOML_HOME: path.join(options.dataDir, 'bentoml-home'),
        BENTOML_DO_NOT_TRACK: 'True',
        BENTO_WORKERS: String(workers),
        BENTO_MAX_BATCH: String(options.maxBatch ?? 32),
        BENTO_MAX_LATENCY_MS: String(options.maxLatencyMs ?? 10_000),
      });
      readyLine = /Service Classifier initialized/;
      readyPath = '/readyz';
      break;
  }
  const child = spawn(command, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const pid = child.pid;
  if (pid === undefined) throw new Error(`${name}: could not start ${command}`);
  const lines: string[] = [];
  let ready = 0;
  const onLine = (line: string) => {
    lines.push(line);
    if (lines.length > 200) lines.shift();
    if (readyLine.test(line)) ready++;
  };
  createInterface({ input: child.stdout }).on('line', onLine);
  createInterface({ input: child.stderr }).on('line', onLine);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));

  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    // The tree as it is now, so workers that outlive their parent can be ended by pid.
    const tree = processTree(pid);
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
    await exited;
    clearTimeout(timer);
    for (const p of tree.slice(1)) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  };

  // Every worker process has loaded the model, and the server answers.
  const deadline = Date.now() + 90_000;
  for (;;) {
    if (child.exitCode !== null) {
      throw new Error(`${name} exited with ${child.exitCode} while starting; last lines:\n${lines.slice(-20).join('\n')}`);
    }
    if (ready >= workers) {
      const ok = await fetch(`http://127.0.0.1:${options.port}${readyPath}`).then(
        (r) => r.ok,
        () => false,
      );
      if (ok) break;
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`${name} was not ready within 90 s; last lines:\n${lines.slice(-20).join('\n')}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  return { name, pid, port: options.port, stop };
}
