import { readdirSync, readFileSync, readlinkSync } from 'node:fs';

/**
 * TCP sockets and their owners from Linux's /proc, for the harness's error messages (who holds a
 * port) and the benches' attribution of Redis connections to processes. Best effort: a table or a
 * process that cannot be read (not Linux, gone meanwhile, not ours to inspect) is left out.
 */
export interface TcpSocket {
  readonly localPort: number;
  /** The kernel's state code, in hex as /proc prints it ('0A' is LISTEN). */
  readonly state: string;
  readonly inode: string;
}

export const LISTEN = '0A';

/** Every IPv4 and IPv6 TCP socket of this network namespace. */
export function tcpSockets(): TcpSocket[] {
  const sockets: TcpSocket[] = [];
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = readFileSync(table, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
      const [, local, , state, , , , , , inode] = line.trim().split(/\s+/);
      if (!local || !state || !inode || inode === '0') continue;
      sockets.push({ localPort: Number.parseInt(local.slice(local.lastIndexOf(':') + 1), 16), state, inode });
    }
  }
  return sockets;
}

/** The inodes of the sockets a process holds open. */
export function socketInodes(pid: number | string): string[] {
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return [];
  }
  const inodes: string[] = [];
  for (const fd of fds) {
    try {
      const socket = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (socket) inodes.push(socket[1]!);
    } catch {
      // closed meanwhile
    }
  }
  return inodes;
}
