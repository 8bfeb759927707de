import type { IncomingMessage } from 'node:http';
import { Readable, Writable } from 'node:stream';
import formidable, { type File } from 'formidable';
import { koaBody } from 'koa-body';
import type { Middleware } from 'koa';
import getRawBody from 'raw-body';
import { PREDICT_URL_MAX_CHARS, PredictUrlBody } from '@conveyor/shared/contract/api.contract';
import { ProblemError } from '@conveyor/shared/problem';
import type { GatewayContext, GatewayState } from '../http/context.js';
import { parseOutboundUrl } from '../http/outbound.js';
import { simpleFormUpload } from './simple-form.js';

/**
 * Where an HTTP request becomes image bytes or an image URL. Three shapes are accepted:
 * multipart/form-data with a `file` (or a `url`) field, a JSON body `{ "url": … }`, and a raw
 * image body (`Content-Type: image/*` or `application/octet-stream`). Size limits are enforced
 * while the body streams in, and a declared Content-Length over the limit is refused unread.
 */
export type PredictInput =
  { readonly kind: 'upload'; readonly bytes: Buffer; readonly filename?: string } | { readonly kind: 'url'; readonly url: URL };

/** Multipart framing (boundaries, part headers) on top of the file itself. */
export const MULTIPART_SLACK = 16 * 1024;
const files = new WeakMap<File, Buffer[]>();
/**
 * Text fields formidable reads before giving up: a predict form has one (`url`) and nothing else,
 * but a few more are read so that the answer can name the unexpected field.
 */
const MAX_FORM_FIELDS = 4;
/** A `url` of PREDICT_URL_MAX_CHARS characters, each up to 4 bytes in UTF-8, and little else. */
const MAX_FIELDS_BYTES = PREDICT_URL_MAX_CHARS * 4 + 4 * 1024;
/** A JSON `{"url": …}` whose every character is escaped as a surrogate pair (`\ud83d\ude00`: 12 bytes). */
const JSON_LIMIT_BYTES = PREDICT_URL_MAX_CHARS * 12 + 4 * 1024;

/** What formidable is told for a multipart form: uploads are kept in memory, never written to disk. */
function formidableOptions(maxBytes: number) {
  return {
    maxFiles: 1,
    maxFields: MAX_FORM_FIELDS,
    maxFieldsSize: MAX_FIELDS_BYTES,
    maxFileSize: maxBytes,
    maxTotalFileSize: maxBytes,
    allowEmptyFiles: false,
    // Nothing touches the disk, so the per-file random name (cuid2 over sha3) is wasted work.
    filename: () => 'upload',
    fileWriteStreamHandler: (file?: unknown) => {
      const chunks: Buffer[] = [];
      files.set(file as File, chunks);
      return new Writable({
        write(chunk: Buffer, _encoding, done) {
          chunks.push(chunk);
          done();
        },
      });
    },
  };
}

/**
 * The predict route's body parser. A raw image body and a multipart form are read whole within the
 * limit (the upload and its framing); the common form (one `file` part: simple-form.ts) is taken
 * from those bytes at once, any other goes through formidable as it always did. A JSON body is
 * koa-body's.
 */
export function predictBodyParser(maxBytes: number): Middleware<GatewayState> {
  const json = koaBody({ multipart: false, json: true, urlencoded: false, text: false, jsonLimit: JSON_LIMIT_BYTES });
  return async (ctx, next) => {
    const declared = Number(ctx.get('content-length') || NaN);
    // null: no body at all (not read here; answered by readPredictInput as before).
    const multipart = Boolean(ctx.is('multipart'));
    if (declared > maxBytes + (multipart ? MULTIPART_SLACK : 0)) {
      throw tooLarge(maxBytes);
    }
    if (ctx.is('image/*', 'application/octet-stream')) {
      ctx.state.rawUpload = await readBody(ctx, maxBytes, maxBytes);
      await next();
      return;
    }
    if (multipart) {
      const body = await readBody(ctx, maxBytes + MULTIPART_SLACK, maxBytes);
      const simple = simpleFormUpload(body, ctx.get('content-type'));
      if (simple && simple.bytes.length > maxBytes) throw tooLarge(maxBytes);
      if (simple) ctx.state.formUpload = simple;
      else await parseForm(ctx, body, maxBytes);
      await next();
      return;
    }
    try {
      await json(ctx, next as () => Promise<void>);
    } catch (error) {
      if ((error as { type?: string }).type === 'entity.too.large' && ctx.is('json')) {
        throw new ProblemError('invalid-request', `A JSON body is {"url": …} with at most ${PREDICT_URL_MAX_CHARS} characters`);
      }
      throw error;
    }
  };
}

/** The body, at most `limit` bytes (a 413 for an upload of more than `maxBytes` beyond it). */
async function readBody(ctx: GatewayContext, limit: number, maxBytes: number): Promise<Buffer> {
  try {
    return await getRawBody(ctx.req, { limit, length: ctx.get('content-length') || undefined });
  } catch (error) {
    if ((error as { status?: number }).status === 413) throw tooLarge(maxBytes);
    throw error;
  }
}

/**
 * A form other than the simple one, parsed by formidable from the bytes read, into
 * `ctx.request.body` (its fields) and `ctx.request.files` as koa-body did; its refusals as problems.
 */
async function parseForm(ctx: GatewayContext, body: Buffer, maxBytes: number): Promise<void> {
  const form = formidable({ multiples: true, ...formidableOptions(maxBytes) });
  // An empty body is no chunk at all, as the request gave formidable none (an empty chunk would reach
  // a parser that a form without a boundary never got).
  const replay = Object.assign(Readable.from(body.length > 0 ? [body] : []), { headers: ctx.req.headers });
  try {
    const [fields, parts] = await form.parse(replay as unknown as IncomingMessage);
    ctx.request.body = single(fields);
    ctx.request.files = single(parts);
  } catch (error) {
    const e = error as { httpCode?: number; message?: string };
    // formidable reports limits with httpCode (no status); the file limit is the one users hit.
    if (e.httpCode === 413 && /maxFiles/.test(e.message ?? '')) {
      throw new ProblemError('invalid-request', 'Send one file per request, in the `file` field');
    }
    if (e.httpCode === 413 && /FileSize/.test(e.message ?? '')) throw tooLarge(maxBytes);
    // formidable's own wording names its options ("options.maxFields (4) exceeded"); too many
    // fields is a malformed form (400), not a body over a size limit (its 413).
    if (/maxFields \(/.test(e.message ?? '')) {
      throw new ProblemError(
        'invalid-request',
        `The form has more than ${MAX_FORM_FIELDS} fields; send the image in the \`file\` field, or a \`url\``,
      );
    }
    // Only a `url` longer than the document allows (or fields it does not allow) can be this long:
    // the fault is the form's shape (400), not a body over the upload limit (413).
    if (/maxFieldsSize/.test(e.message ?? '')) {
      throw new ProblemError('invalid-request', `The form's text fields exceed ${MAX_FIELDS_BYTES} bytes in total`, {
        limitBytes: MAX_FIELDS_BYTES,
      });
    }
    if (/allowEmptyFiles/.test(e.message ?? '')) throw new ProblemError('invalid-request', 'The uploaded file is empty');
    throw error;
  }
}

/** A name given once maps to its value, one given more often to all of them (as koa-body gave them). */
function single<T>(values: Record<string, T[] | undefined>): Record<string, T | T[]> {
  const result: Record<string, T | T[]> = {};
  for (const [name, list] of Object.entries(values)) {
    if (list !== undefined) result[name] = list.length === 1 ? list[0]! : list;
  }
  return result;
}

export function readPredictInput(ctx: GatewayContext): PredictInput {
  const raw = ctx.state.rawUpload;
  if (raw) {
    if (raw.length === 0) throw new ProblemError('invalid-request', 'The request body is empty');
    return { kind: 'upload', bytes: raw };
  }
  if (ctx.is('multipart')) {
    const simple = ctx.state.formUpload;
    if (simple) return { kind: 'upload', bytes: simple.bytes, filename: simple.filename.slice(0, 256) };
    const fields = (ctx.request.body ?? {}) as Record<string, unknown>;
    const upload = ctx.request.files?.file;
    // A form is exactly a `file` part or a `url` field (the OpenAPI document's oneOf): anything else
    // would be ignored, so it is refused instead, naming what was sent.
    const unexpected = Object.keys(fields).filter((k) => k !== 'url');
    if (unexpected.length > 0) {
      throw new ProblemError(
        'invalid-request',
        unexpected.includes('file')
          ? 'The `file` field must be a file part (with a filename), not a text field'
          : `Unexpected form field ${unexpected.map((k) => `\`${k.slice(0, 64)}\``).join(', ')}: send only \`file\` or \`url\``,
      );
    }
    const url = typeof fields.url === 'string' ? fields.url : undefined;
    if (upload && url !== undefined) throw new ProblemError('invalid-request', 'Send either a `file` or a `url`, not both');
    if (url !== undefined) {
      const checked = PredictUrlBody.shape.url.safeParse(url);
      if (!checked.success) {
        throw new ProblemError(
          'invalid-request',
          `The url must be an absolute URL of at most ${PREDICT_URL_MAX_CHARS} characters`,
        );
      }
      return { kind: 'url', url: parseOutboundUrl(url) };
    }
    if (!upload || Array.isArray(upload)) {
      const other = Object.keys(ctx.request.files ?? {}).filter((k) => k !== 'file');
      throw new ProblemError(
        'invalid-request',
        other.length
          ? `Expected the image in the \`file\` field, got ${other.map((k) => `\`${k}\``).join(', ')}`
          : 'Expected a `file` (or `url`) field',
      );
    }
    const chunks = files.get(upload) ?? [];
    return {
      kind: 'upload',
      bytes: Buffer.concat(chunks),
      ...(upload.originalFilename ? { filename: upload.originalFilename.slice(0, 256) } : {}),
    };
  }
  if (ctx.is('json')) {
    const parsed = PredictUrlBody.safeParse(ctx.request.body);
    if (!parsed.success) throw new ProblemError('invalid-request', 'Expected a JSON body like {"url": "https://…"}');
    return { kind: 'url', url: parseOutboundUrl(parsed.data.url) };
  }
  throw new ProblemError(
    'unsupported-media-type',
    `Send multipart/form-data (field \`file\` or \`url\`), application/json {"url": …}, or the raw image bytes; got ${ctx.get('content-type') || 'no Content-Type'}`,
  );
}

export function tooLarge(maxBytes: number): ProblemError {
  return new ProblemError('payload-too-large', `The image must be at most ${maxBytes} bytes`, { limitBytes: maxBytes });
}
