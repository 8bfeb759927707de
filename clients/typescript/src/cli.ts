#!/usr/bin/env node
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ConveyorClient, ConveyorProblem, ConveyorUnreachable } from './conveyor-client.js';

/**
 * `conveyor predict <file|url> [--model m] [--async]`: classifies an image through a gateway and
 * prints the answer as JSON (the result; with --async the accepted job). `conveyor job <id>`
 * prints a job. The gateway is CONVEYOR_URL (default http://localhost:8080), the key
 * CONVEYOR_API_KEY. Exit 0 with an answer, 1 with a problem (printed to stderr), 2 for bad usage.
 */
const USAGE = `usage: conveyor predict <file|url> [--model <name>] [--async] [--wait <seconds>] [--callback <url>]
       conveyor job <id> [--wait-done]
       conveyor models
options: --gateway <url> (CONVEYOR_URL, default http://localhost:8080), --api-key <key> (CONVEYOR_API_KEY)`;

async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        model: { type: 'string' },
        async: { type: 'boolean', default: false },
        wait: { type: 'string' },
        callback: { type: 'string' },
        'wait-done': { type: 'boolean', default: false },
        gateway: { type: 'string' },
        'api-key': { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (error) {
    console.error(`${(error as Error).message}\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  const [command, target] = positionals;
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const apiKey = values['api-key'] ?? process.env.CONVEYOR_API_KEY;
  const client = new ConveyorClient({
    baseUrl: values.gateway ?? process.env.CONVEYOR_URL ?? 'http://localhost:8080',
    ...(apiKey ? { apiKey } : {}),
  });
  const print = (value: unknown) => console.log(JSON.stringify(value, null, 2));
  switch (command ?? '') {
    case 'predict': {
      if (!target) break;
      const image = /^https?:\/\//i.test(target)
        ? { url: target }
        : { bytes: await readFile(target), filename: path.basename(target) };
      const waitSeconds = values.wait === undefined ? undefined : Number(values.wait);
      if (waitSeconds !== undefined && !Number.isFinite(waitSeconds)) break;
      const outcome = await client.predict(image, {
        ...(values.model ? { model: values.model } : {}),
        async: values.async,
        ...(waitSeconds !== undefined ? { waitSeconds } : {}),
        ...(values.callback ? { callbackUrl: values.callback } : {}),
      });
      print(outcome.kind === 'completed' ? outcome.result : outcome.job);
      return 0;
    }
    case 'job':
      if (!target) break;
      print(values['wait-done'] ? await client.waitForJob(target) : await client.job(target));
      return 0;
    case 'models':
      print(await client.models());
      return 0;
  }
  console.error(USAGE);
  return 2;
}

main(process.argv.slice(2)).then(
  (code) => (process.exitCode = code),
  (error: unknown) => {
    if (error instanceof ConveyorProblem) {
      console.error(JSON.stringify(error.problem, null, 2));
    } else if (error instanceof ConveyorUnreachable) {
      console.error(`conveyor: ${error.message}; choose the gateway with --gateway or CONVEYOR_URL`);
    } else {
      console.error(`conveyor: ${(error as Error).message}`);
    }
    process.exitCode = 1;
  },
);
