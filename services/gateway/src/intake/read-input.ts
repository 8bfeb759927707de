import { Writable } from 'node:stream';
import type { File } from 'formidable';
import { koaBody } from 'koa-body';
import type { Middleware } from 'koa';
import getRawBody from 'raw-body';
import { PREDICT_URL_MAX_CHARS, PredictUrlBody } from '@conveyor/shared/contract/api.contract';
import { ProblemError } from '@conveyor/shared/problem';
import type { GatewayContext, GatewayState } from '../http/context.js';
import { parseOutboundUrl } from '../http/outbound.js';

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

/** koa-body for the predict route only: uploads are kept in memory, never written to disk. */
export function predictBodyParser(maxBytes: number): Middleware<GatewayState> {
  const parser = koaBody({
    multipart: true,
    json: true,
    urlencoded: false,
    text: false,
    jsonLimit: JSON_LIMIT_BYTES,
    formidable: {
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
    },
  });
  return async (ctx, next) => {
    const declared = Number(ctx.get('content-length') || NaN);
    if (declared > maxBytes + (ctx.is('multipart') ? MULTIPART_SLACK : 0)) {
      throw tooLarge(maxBytes);
    }
    if (ctx.is('image/*', 'application/octet-stream')) {
      try {
        const bytes = await getRawBody(ctx.req, { limit: maxBytes, length: ctx.get('content-length') || undefined });
        ctx.state.rawUpload = bytes;
      } catch (error) {
        if ((error as { status?: number }).status === 413) throw tooLarge(maxBytes);
        throw error;
      }
      await next();
      return;
    }
    try {
      await parser(ctx, next as () => Promise<void>);
    } catch (error) {
      const e = error as { httpCode?: number; code?: number; message?: string };
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
      if ((error as { type?: string }).type === 'entity.too.large' && ctx.is('json')) {
        throw new ProblemError('invalid-request', `A JSON body is {"url": …} with at most ${PREDICT_URL_MAX_CHARS} characters`);
      }
      if (/allowEmptyFiles/.test(e.message ?? '')) throw new ProblemError('invalid-request', 'The uploaded file is empty');
      throw error;
    }
  };
}

export function readPredictInput(ctx: GatewayContext): PredictInput {
  const raw = ctx.state.rawUpload;
  if (raw) {
    if (raw.length === 0) throw new ProblemError('invalid-request', 'The request body is empty');
    return { kind: 'upload', bytes: raw };
  }
  if (ctx.is('multipart')) {
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
