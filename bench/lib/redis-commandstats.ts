import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import path from 'node:path';
import { Redis } from 'ioredis';
import ts from 'typescript';
import { socketInodes, tcpSockets } from '../../harness/proc-sockets.js';

/**
 * Where Redis's time goes per request, by command and by script, for the benchmarks.
 *
 * Two sources, read over one measuring window:
 * - `INFO commandstats` before and after: calls and microseconds of every command, including the
 *   commands scripts call (an XADD inside BullMQ's moveToFinished counts as an XADD) — but all
 *   scripts together as one `evalsha`.
 * - `SLOWLOG` with `slowlog-log-slower-than 0`: every top-level command with its duration (the same
 *   clock as commandstats) and its first arguments, so an EVALSHA is attributed to its script by
 *   the SHA1 in args[1], and each call to the client connection that sent it (the gateway, a worker,
 *   the monitor: found by matching the connection's port to the sockets in /proc/<pid>/fd). The log
 *   is polled while the window lasts, so `slowlog-max-len` only has to hold one polling interval.
 *   Commands run inside scripts are not logged on their own: they are inside their script's time.
 *
 * Scripts are named by hashing the Lua texts a checkout contains (ioredis sends a script by the SHA1
 * of its text): BullMQ's (node_modules/bullmq's compiled scripts), the project's (string constants
 * passed to `defineCommand` in shared/src and services/src, and any .lua files there). A script
 * that is built at run time from pieces is still named, if `watchScriptLoads` ran while it was
 * first sent: ioredis sends each script's full text (EVAL) the first time on every connection, and a
 * MONITOR connection sees it; such a script is named `script:<sha prefix>` plus its first comment
 * line. Nothing here needs the services' cooperation, so it works on any build.
 */

export interface ScriptInfo {
  readonly name: string;
  readonly text: string;
}

/** SHA1 of the script text → name, from the checkouts' sources and their node_modules/bullmq. */
export function scriptTable(checkouts: readonly string[]): Map<string, ScriptInfo> {
  const table = new Map<string, ScriptInfo>();
  const add = (name: string, text: string) => {
    const sha = sha1(text);
    if (!table.has(sha)) table.set(sha, { name, text });
  };
  for (const checkout of checkouts) {
    const bullmq = path.join(checkout, 'node_modules/bullmq/dist/cjs/scripts/index.js');
    if (existsSync(bullmq)) {
      const scripts = createRequire(bullmq)(bullmq) as Record<string, { name: string; content: string }>;
      for (const script of Object.values(scripts)) add(`bullmq ${script.name}`, script.content);
    }
    const roots = [path.join(checkout, 'shared/src')];
    const services = path.join(checkout, 'services');
    if (existsSync(services)) for (const s of readdirSync(services)) roots.push(path.join(services, s, 'src'));
    for (const file of roots.flatMap((root) => sourceFiles(root))) {
      if (file.endsWith('.lua')) add(path.basename(file, '.lua'), readFileSync(file, 'utf8'));
      else for (const [name, text] of luaConstants(file)) add(name, text);
    }
  }
  return table;
}

function sourceFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .filter((f) => (f.endsWith('.ts') && !f.endsWith('.d.ts') && !f.endsWith('.test.ts')) || f.endsWith('.lua'))
    .map((f) => path.join(dir, f));
}

/**
 * The Lua scripts a TypeScript file declares as constants (text calling `redis.call`/`redis.pcall`),
 * named by the `defineCommand('name', { lua: CONSTANT })` that registers them, else `file:CONSTANT`.
 * Substitutions of constants declared in the file (`${TTL_SECONDS}`) are filled in; others are not
 * (the MONITOR capture names those).
 */
function luaConstants(file: string): [string, string][] {
  const source = ts.createSourceFile(file, readFileSync(file, 'utf8'), ts.ScriptTarget.Latest, true);
  const literals = new Map<string, string>();
  const constants = new Map<string, ts.Expression>();
  const commandNames = new Map<string, string>();
  const visit = (node: ts.Node): void => {
    if (ts.isVariableDeclaration(node) && ts.isIdentifier(node.name) && node.initializer) {
      constants.set(node.name.text, node.initializer);
    }
    if (
      ts.isCallExpression(node) &&
      ts.isPropertyAccessExpression(node.expression) &&
      node.expression.name.text === 'defineCommand'
    ) {
      const [name, options] = node.arguments;
      if (name && ts.isStringLiteralLike(name) && options && ts.isObjectLiteralExpression(options)) {
        for (const p of options.properties) {
          if (ts.isPropertyAssignment(p) && p.name.getText(source) === 'lua' && ts.isIdentifier(p.initializer)) {
            commandNames.set(p.initializer.text, name.text);
          }
        }
      }
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  const evaluate = (e: ts.Expression, depth = 0): string | undefined => {
    if (depth > 4) return undefined;
    if (ts.isStringLiteralLike(e)) return e.text;
    if (ts.isNumericLiteral(e)) return String(Number(e.text));
    if (ts.isParenthesizedExpression(e)) return evaluate(e.expression, depth + 1);
    if (ts.isIdentifier(e)) {
      const init = constants.get(e.text);
      return init ? evaluate(init, depth + 1) : undefined;
    }
    if (ts.isTemplateExpression(e)) {
      let text = e.head.text;
      for (const span of e.templateSpans) {
        const value = evaluate(span.expression, depth + 1);
        if (value === undefined) return undefined;
        text += value + span.literal.text;
      }
      return text;
    }
    return undefined;
  };
  const base = path.basename(file, '.ts');
  for (const [name, init] of constants) {
    const text = evaluate(init);
    if (text !== undefined && /redis\.p?call\(/.test(text)) literals.set(commandNames.get(name) ?? `${base}:${name}`, text);
  }
  return [...literals];
}

const sha1 = (text: string) => createHash('sha1').update(text).digest('hex');

/** The first comment line of a Lua text (`-- …` or the first line of `--[[ … ]]`), for an unnamed script. */
function firstComment(text: string): string {
  for (const line of text.split('\n')) {
    const m = /^\s*--(?:\[\[)?\s*(.*\S)/.exec(line);
    if (m) return m[1]!.slice(0, 60);
  }
  return '';
}

export interface BreakdownRow {
  /** The command (`XADD`), or the script's name (`bullmq moveToFinished`, `conveyorCommitResult`). */
  readonly name: string;
  readonly callsPerRequest: number;
  readonly usPerRequest: number;
}

export interface RedisBreakdown {
  readonly requests: number;
  /** Top-level commands and scripts, per client process (`gateway`, `worker`, … or `other`), slowest first. */
  readonly bySide: Record<string, BreakdownRow[]>;
  /** The same over all processes. */
  readonly all: BreakdownRow[];
  /** By script: the commands it ran, per request (their time is part of the script's). */
  readonly insideScripts: Record<string, BreakdownRow[]>;
  /** Sum of the top-level commands' time per request (what commandstats' total also gives). */
  readonly commandUsPerRequest: number;
  /**
   * INFO commandstats over the window, by command: `calls` counts those inside scripts too;
   * `nestedCallsPerRequest` is the part run inside scripts (commandstats minus the top-level log).
   */
  readonly commandstats: (BreakdownRow & { readonly nestedCallsPerRequest: number })[];
  /** Log entries that rotated out between two polls (0: the breakdown saw every command). */
  readonly lostEntries: number;
}

type SlowlogEntry = [number, number, number, string[], string, string];

const CLIENT_NAME = 'redis-breakdown';
/** The address the slow log gives the commands a script runs. */
const LUA_CLIENT = '?:0';
const POLL_MS = 100;
const MAX_LEN = 200_000;

/**
 * One measuring helper per Redis: `watchScriptLoads()` before the services start (optional),
 * `begin()` and `end(requests, pids)` around each measured window, `close()` once.
 */
export class RedisCommandStats {
  private readonly client: Redis;
  private readonly scripts: Map<string, ScriptInfo>;
  private monitorSocket: net.Socket | undefined;
  private window:
    | {
        before: Map<string, { calls: number; usec: number }>;
        entries: SlowlogEntry[];
        lastId: number;
        lost: number;
        poller: NodeJS.Timeout;
        polling: Promise<void>;
      }
    | undefined;
  private saved: string[] = [];

  constructor(
    private readonly url: string,
    checkouts: readonly string[],
  ) {
    this.client = new Redis(url, { connectionName: CLIENT_NAME, maxRetriesPerRequest: 1 });
    this.scripts = scriptTable(checkouts);
  }

  /** Learns the full text of every script sent with EVAL or SCRIPT LOAD from now until `begin()`. */
  async watchScriptLoads(): Promise<void> {
    if (this.monitorSocket) return;
    const { hostname, port } = new URL(this.url);
    const socket = net.connect(Number(port || 6379), hostname || '127.0.0.1');
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    socket.write('CLIENT SETNAME redis-breakdown-monitor\r\nMONITOR\r\n');
    let buffer = '';
    socket.setEncoding('latin1'); // one char per byte: Lua text is hashed as the bytes Redis saw
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      let end: number;
      while ((end = buffer.indexOf('\r\n')) >= 0) {
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const args = monitorArgs(line);
        const command = args[0]?.toLowerCase();
        const lua =
          command === 'eval' ? args[1] : command === 'script' && args[1]?.toLowerCase() === 'load' ? args[2] : undefined;
        if (lua === undefined) continue;
        const text = Buffer.from(lua, 'latin1').toString('utf8');
        const sha = createHash('sha1').update(Buffer.from(lua, 'latin1')).digest('hex');
        if (!this.scripts.has(sha)) {
          const comment = firstComment(text);
          this.scripts.set(sha, { name: `script:${sha.slice(0, 8)}${comment ? ` (${comment})` : ''}`, text });
        }
      }
    });
    socket.on('error', () => undefined);
    this.monitorSocket = socket;
  }

  async begin(): Promise<void> {
    if (this.window) throw new Error('begin() twice without end()');
    this.monitorSocket?.destroy();
    this.monitorSocket = undefined;
    if (this.saved.length === 0) {
      const current = (await this.client.config('GET', 'slowlog-*')) as string[];
      this.saved = current;
    }
    await this.client.config('SET', 'slowlog-log-slower-than', '0', 'slowlog-max-len', String(MAX_LEN));
    await this.client.slowlog('RESET');
    const before = parseCommandstats(await this.client.info('commandstats'));
    const window = {
      before,
      entries: [] as SlowlogEntry[],
      lastId: -1,
      lost: 0,
      poller: undefined as unknown as NodeJS.Timeout,
      polling: Promise.resolve(),
    };
    window.poller = setInterval(() => {
      window.polling = window.polling.then(() => this.poll());
    }, POLL_MS);
    this.window = window;
  }

  /** Reads the log entries newer than the last read, growing the read until it reaches the last one. */
  private async poll(): Promise<void> {
    const window = this.window;
    if (!window) return;
    for (let count = 1000; ; count *= 4) {
      const got = (await this.client.slowlog('GET', count)) as SlowlogEntry[];
      const fresh = got.filter((e) => e[0] > window.lastId);
      const reachedLast = fresh.length < got.length || got.length < count;
      if (reachedLast || count >= MAX_LEN) {
        if (!reachedLast && window.lastId >= 0) window.lost += fresh.at(-1)![0] - window.lastId - 1;
        if (fresh.length > 0) window.lastId = fresh[0]![0];
        for (let i = fresh.length - 1; i >= 0; i--) window.entries.push(fresh[i]!);
        return;
      }
    }
  }

  /**
   * Ends the window: `requests` requests were measured; `processes` names the client processes
   * (label → pid, still running) whose connections' calls are reported apart.
   */
  async end(requests: number, processes: Record<string, number> = {}): Promise<RedisBreakdown> {
    const window = this.window;
    if (!window) throw new Error('end() without begin()');
    clearInterval(window.poller);
    await window.polling;
    await this.poll();
    const after = parseCommandstats(await this.client.info('commandstats'));
    this.window = undefined;
    await this.client.config('SET', 'slowlog-log-slower-than', '-1');

    const portOwner = clientPorts(processes);
    const sides = new Map<string, Map<string, { calls: number; usec: number }>>();
    const all = new Map<string, { calls: number; usec: number }>();
    const inside = new Map<string, Map<string, { calls: number; usec: number }>>();
    const topLevelCalls = new Map<string, number>();
    const count = (m: Map<string, { calls: number; usec: number }>, name: string, usec: number) => {
      const row = m.get(name) ?? { calls: 0, usec: 0 };
      row.calls++;
      row.usec += usec;
      m.set(name, row);
    };
    // A command a script runs is logged from Redis's Lua client ("?:0") just before its script's
    // own entry, which is logged once the script has returned: held back until then.
    let pending: [string, number][] = [];
    for (const [, , usec, args, address, clientName] of window.entries) {
      if (clientName === CLIENT_NAME) continue;
      const command = (args[0] ?? '').toLowerCase();
      if (address === LUA_CLIENT) {
        pending.push([command.toUpperCase(), usec]);
        continue;
      }
      topLevelCalls.set(command, (topLevelCalls.get(command) ?? 0) + 1);
      const name = this.nameOf(command, args);
      const side = portOwner.get(Number(address.slice(address.lastIndexOf(':') + 1))) ?? 'other';
      if (!sides.has(side)) sides.set(side, new Map());
      count(sides.get(side)!, name, usec);
      count(all, name, usec);
      if (pending.length > 0) {
        const script = /^(eval|fcall)/.test(command) ? name : '(unattributed)';
        if (!inside.has(script)) inside.set(script, new Map());
        for (const [nested, us] of pending) count(inside.get(script)!, nested, us);
        pending = [];
      }
    }
    const rows = (m: Map<string, { calls: number; usec: number }>): BreakdownRow[] =>
      [...m]
        .map(([name, r]) => ({ name, callsPerRequest: round(r.calls / requests), usPerRequest: round(r.usec / requests) }))
        .sort((a, b) => b.usPerRequest - a.usPerRequest);
    const ours = new Set(['info', 'slowlog', 'config', 'client']);
    const commandstats = [...after]
      .filter(([command]) => !ours.has(command.split('|')[0]!))
      .map(([command, a]) => {
        const b = window.before.get(command) ?? { calls: 0, usec: 0 };
        const calls = a.calls - b.calls;
        return {
          name: command.toUpperCase(),
          callsPerRequest: round(calls / requests),
          usPerRequest: round((a.usec - b.usec) / requests),
          nestedCallsPerRequest: round(Math.max(0, calls - (topLevelCalls.get(command) ?? 0)) / requests),
        };
      })
      .filter((r) => r.callsPerRequest > 0)
      .sort((x, y) => y.usPerRequest - x.usPerRequest);
    const allRows = rows(all);
    return {
      requests,
      insideScripts: Object.fromEntries(
        [...inside].sort(([a], [b]) => a.localeCompare(b)).map(([script, m]) => [script, rows(m)]),
      ),
      bySide: Object.fromEntries([...sides].sort(([a], [b]) => a.localeCompare(b)).map(([side, m]) => [side, rows(m)])),
      all: allRows,
      commandUsPerRequest: round(allRows.reduce((s, r) => s + r.usPerRequest, 0)),
      commandstats,
      lostEntries: window.lost,
    };
  }

  private nameOf(command: string, args: readonly string[]): string {
    if (command === 'evalsha' || command === 'evalsha_ro') {
      const sha = (args[1] ?? '').toLowerCase();
      return this.scripts.get(sha)?.name ?? `script:${sha.slice(0, 8)}`;
    }
    if (command === 'eval' || command === 'eval_ro') {
      // The log keeps 128 bytes of a long argument, then "... (N more bytes)".
      const prefix = (args[1] ?? '').replace(/\.\.\. \(\d+ more bytes\)$/, '');
      for (const script of this.scripts.values()) if (script.text.startsWith(prefix)) return `${script.name} (EVAL)`;
      return `EVAL (${firstComment(prefix)})`;
    }
    if (command === 'fcall' || command === 'fcall_ro') return `FCALL ${args[1] ?? ''}`;
    return command.toUpperCase();
  }

  async close(): Promise<void> {
    this.monitorSocket?.destroy();
    if (this.window) clearInterval(this.window.poller);
    if (this.saved.length > 0) await this.client.config('SET', ...(this.saved as [string, string])).catch(() => undefined);
    this.client.disconnect();
  }
}

export function parseCommandstats(info: string): Map<string, { calls: number; usec: number }> {
  const stats = new Map<string, { calls: number; usec: number }>();
  for (const m of info.matchAll(/^cmdstat_(\S+):calls=(\d+),usec=(\d+)/gm)) {
    stats.set(m[1]!, { calls: Number(m[2]), usec: Number(m[3]) });
  }
  return stats;
}

/** The arguments of one MONITOR line (`+ts [db addr] "a" "b\n"`), unescaped as Redis escaped them (sdscatrepr). */
function monitorArgs(line: string): string[] {
  const args: string[] = [];
  let i = line.indexOf('"');
  while (i >= 0 && i < line.length) {
    let arg = '';
    i++;
    while (i < line.length && line[i] !== '"') {
      if (line[i] === '\\') {
        const c = line[i + 1];
        if (c === 'x') {
          arg += String.fromCharCode(parseInt(line.slice(i + 2, i + 4), 16));
          i += 4;
          continue;
        }
        arg += c === 'n' ? '\n' : c === 'r' ? '\r' : c === 't' ? '\t' : c === 'a' ? '\x07' : c === 'b' ? '\b' : (c ?? '');
        i += 2;
        continue;
      }
      arg += line.charAt(i);
      i++;
    }
    args.push(arg);
    i = line.indexOf('"', i + 1);
  }
  return args;
}

/** Local TCP port → label, for every socket the given processes hold (Linux /proc). */
function clientPorts(processes: Record<string, number>): Map<number, string> {
  const inodeOwner = new Map<string, string>();
  for (const [label, pid] of Object.entries(processes)) for (const inode of socketInodes(pid)) inodeOwner.set(inode, label);
  const ports = new Map<number, string>();
  for (const socket of tcpSockets()) {
    const label = inodeOwner.get(socket.inode);
    if (label) ports.set(socket.localPort, label);
  }
  return ports;
}

const round = (x: number) => Math.round(x * 1000) / 1000;

/** A text table: per side, then the commandstats view. */
export function formatBreakdown(title: string, b: RedisBreakdown): string {
  const lines = [`${title}: Redis command time ${b.commandUsPerRequest} µs per request (${b.requests} requests)`];
  const table = (rows: readonly BreakdownRow[], extra?: (r: BreakdownRow) => string) => {
    for (const r of rows) {
      lines.push(
        `    ${r.name.padEnd(48)} ${r.callsPerRequest.toFixed(3).padStart(8)} calls ${r.usPerRequest.toFixed(2).padStart(8)} µs${extra ? extra(r) : ''}`,
      );
    }
  };
  for (const [side, rows] of Object.entries(b.bySide)) {
    const us = rows.reduce((s, r) => s + r.usPerRequest, 0);
    const calls = rows.reduce((s, r) => s + r.callsPerRequest, 0);
    lines.push(`  ${side}: ${calls.toFixed(2)} top-level calls, ${us.toFixed(1)} µs per request`);
    table(rows);
  }
  for (const [script, rows] of Object.entries(b.insideScripts)) {
    lines.push(`  inside ${script}:`);
    table(rows);
  }
  lines.push('  INFO commandstats (commands inside scripts counted too; EVALSHA includes them):');
  table(b.commandstats, (r) => {
    const nested = (r as RedisBreakdown['commandstats'][number]).nestedCallsPerRequest;
    return nested > 0 ? `  (${nested.toFixed(3)} not logged: inside scripts, MULTI or blocked)` : '';
  });
  if (b.lostEntries > 0) lines.push(`  (${b.lostEntries} log entries rotated out before they were read)`);
  return lines.join('\n');
}

/** Row by row, the median over several windows (a row missing from a window counts as 0 there). */
export function medianBreakdown(windows: readonly RedisBreakdown[]): RedisBreakdown {
  const med = (xs: number[]) => {
    const s = [...xs].sort((a, b) => a - b);
    return s[Math.floor(s.length / 2)] ?? 0;
  };
  const merge = <R extends BreakdownRow>(
    lists: readonly (readonly R[])[],
    nested = false,
  ): (R & { nestedCallsPerRequest?: number })[] => {
    const names = [...new Set(lists.flatMap((l) => l.map((r) => r.name)))];
    return names
      .map((name) => {
        const found = lists.map((l) => l.find((r) => r.name === name));
        const row: BreakdownRow & { nestedCallsPerRequest?: number } = {
          name,
          callsPerRequest: med(found.map((r) => r?.callsPerRequest ?? 0)),
          usPerRequest: med(found.map((r) => r?.usPerRequest ?? 0)),
          ...(nested
            ? {
                nestedCallsPerRequest: med(
                  found.map((r) => (r as { nestedCallsPerRequest?: number } | undefined)?.nestedCallsPerRequest ?? 0),
                ),
              }
            : {}),
        };
        return row as R & { nestedCallsPerRequest?: number };
      })
      .sort((a, b) => b.usPerRequest - a.usPerRequest);
  };
  const sides = [...new Set(windows.flatMap((w) => Object.keys(w.bySide)))].sort();
  const scripts = [...new Set(windows.flatMap((w) => Object.keys(w.insideScripts)))].sort();
  return {
    requests: windows[0]?.requests ?? 0,
    bySide: Object.fromEntries(sides.map((side) => [side, merge(windows.map((w) => w.bySide[side] ?? []))])),
    all: merge(windows.map((w) => w.all)),
    insideScripts: Object.fromEntries(
      scripts.map((script) => [script, merge(windows.map((w) => w.insideScripts[script] ?? []))]),
    ),
    commandUsPerRequest: med(windows.map((w) => w.commandUsPerRequest)),
    commandstats: merge(
      windows.map((w) => w.commandstats),
      true,
    ),
    lostEntries: windows.reduce((s, w) => s + w.lostEntries, 0),
  };
}
