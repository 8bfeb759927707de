#!/usr/bin/env node
import { InspectError } from './onnx-inspect.js';
import { main, UsageError, USAGE } from './models.cli.js';

// `npm run models -- add …` / `make model-add …`; the compiled bin is `conveyor-models`.
main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: unknown) => {
    if (error instanceof UsageError) console.error(`${error.message}\n\n${USAGE}`);
    else if (error instanceof InspectError) console.error(`cannot read the model: ${error.message}`);
    else console.error(error instanceof Error ? error.message : error);
    process.exit(error instanceof UsageError ? 64 : 1);
  },
);
