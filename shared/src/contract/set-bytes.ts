import type { Socket } from 'node:net';
import { Command } from 'ioredis';
import type { Redis } from '@conveyor/shared/redis';

/**
 * `SET key <bytes> EX ttl` with the caller's Buffer written to the socket as it is. ioredis encodes a
 * command with a Buffer argument by copying every part into one fresh Buffer of the whole command
 * (Command.toWritable's MixedBuffers): for an upload that is one more allocation and copy of the
 * image per request, measured at 0.8 ms of the gateway's CPU per 1 MB photo (the copy into fresh,
 * never-touched pages) plus the GC of the Buffer (docs/performance.md, "The gateway's cost per
 * megabyte"). Here the RESP header, the image and the trailer go out in one corked write (a
 * writev): the kernel copies the image, JavaScript does not.
 *
 * Only on a plain connection that writes commands in the order they are issued: no Cluster (it
 * routes commands itself), no auto-pipelining (a command written to the socket directly would
 * overtake those waiting in the open pipeline), no key prefix (ioredis adds it while encoding).
 * Anywhere else `redis.set` does the same thing with its copy.
 */
export async function setBytes(redis: Redis, key: string, bytes: Buffer, ttlSeconds: number): Promise<void> {
  if (!writesDirectly(redis)) {
    await redis.set(key, bytes, 'EX', ttlSeconds);
    return;
  }
  await redis.sendCommand(new SetBytesCommand(key, bytes, ttlSeconds));
}

function writesDirectly(redis: Redis): boolean {
  if ('isCluster' in redis && redis.isCluster) return false;
  const { enableAutoPipelining, keyPrefix } = (redis as { options: { enableAutoPipelining?: boolean; keyPrefix?: string } })
    .options;
  return !enableAutoPipelining && !keyPrefix;
}

class SetBytesCommand extends Command {
  private readonly head: string;
  private readonly tail: string;

  constructor(
    key: string,
    private readonly bytes: Buffer,
    ttlSeconds: number,
  ) {
    const ttl = String(ttlSeconds);
    super('set', [key, bytes, 'EX', ttl], { replyEncoding: 'utf8' });
    this.head = `*5\r\n$3\r\nSET\r\n$${Buffer.byteLength(key)}\r\n${key}\r\n$${bytes.length}\r\n`;
    this.tail = `\r\n$2\r\nEX\r\n$${ttl.length}\r\n${ttl}\r\n`;
  }

  /**
   * ioredis writes what this returns to `socket` at once (Redis.sendCommand); the header and the
   * image go first, corked with it into one writev, uncorked on the next tick.
   */
  override toWritable(socket: object): string {
    const stream = socket as Socket;
    stream.cork();
    stream.write(this.head);
    stream.write(this.bytes);
    process.nextTick(() => stream.uncork());
    return this.tail;
  }
}
