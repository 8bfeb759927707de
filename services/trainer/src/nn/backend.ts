import { createRequire } from 'node:module';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { setWasmPaths } from '@tensorflow/tfjs-backend-wasm';

/**
 * tfjs on its WebAssembly backend (XNNPACK): ~5× the plain JS backend and bitwise repeatable.
 * `@tensorflow/tfjs-node` would be faster but downloads native binaries at install time, which
 * this project does not allow. The wasm files ship inside the npm package.
 */
let ready: Promise<void> | undefined;

type ErrorEvent = 'uncaughtException' | 'unhandledRejection';
type Listener = (...args: unknown[]) => void;
const processErrorListeners = (): Record<ErrorEvent, Listener[]> => ({
  uncaughtException: process.listeners('uncaughtException') as Listener[],
  unhandledRejection: process.listeners('unhandledRejection') as Listener[],
});

export function useWasmBackend(): Promise<void> {
  ready ??= (async () => {
    const require = createRequire(import.meta.url);
    // tfjs-core registers no gradients and its ESM build cannot be deep-imported by Node; the
    // @tensorflow/tfjs bundle registers all of them in tfjs' global registry, which core shares.
    require('@tensorflow/tfjs');
    const dist = path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm.wasm'));
    setWasmPaths(`${dist}${path.sep}`); // needs the trailing separator
    const before = processErrorListeners();
    try {
      // setBackend answers false instead of throwing when the backend cannot start.
      if (!(await tf.setBackend('wasm'))) throw new Error('the tfjs wasm backend failed to initialise');
      await tf.ready();
    } finally {
      // Emscripten's start-up adds process-wide `uncaughtException` and `unhandledRejection`
      // handlers that rethrow: any stray rejection anywhere in the process (a test runner's, a
      // server's) would then crash it instead of being handled where it belongs. Take them off.
      for (const [event, listeners] of Object.entries(processErrorListeners()) as [ErrorEvent, Listener[]][]) {
        for (const listener of listeners) if (!before[event].includes(listener)) process.off(event, listener);
      }
    }
  })();
  return ready;
}

export { tf };
