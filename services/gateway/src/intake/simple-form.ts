/**
 * The form nearly every client sends (curl -F, requests, browsers, fetch with FormData): one part,
 * `Content-Disposition: form-data; name="file"; filename="…"`, its Content-Type, the image,
 * the closing boundary. Read here straight from the body in memory (the image is a view of it, not
 * a copy); formidable's parser, its per-request objects and streams cost the gateway about 0.2 ms
 * of CPU per upload more than a raw body. Anything else — a `url` field, several parts, another
 * header, an escape in the file name, an empty file, a malformed form — is not read here
 * (`undefined`) and goes to formidable as before, so its answers, problems included, are unchanged.
 *
 * What is accepted is exactly what formidable would make of the same bytes: the file `file` with
 * that original file name, and no field.
 */
export interface SimpleUpload {
  readonly bytes: Buffer;
  readonly filename: string;
}

/** formidable's reading of the boundary (plugins/multipart.js), so both see the same one. */
const BOUNDARY = /boundary=(?:"([^"]+)"|([^;]+))/i;
/** Printable ASCII without the characters formidable's file name reading would change (`\`, `%22`, `&#…;`) or end at (`"`). */
const DISPOSITION = /^form-data; name="file"; filename="([\x20\x21\x23-\x24\x27-\x5B\x5D-\x7E]+)"$/;
const CONTENT_TYPE = /^[\x21-\x7E][\x20-\x7E]*$/;
/** Part headers longer than this are not the simple form. */
const MAX_HEADERS_BYTES = 1024;
const CRLF = Buffer.from('\r\n');
const HEADERS_END = Buffer.from('\r\n\r\n');

export function simpleFormUpload(body: Buffer, contentType: string): SimpleUpload | undefined {
  const match = BOUNDARY.exec(contentType);
  const boundary = match?.[1] ?? match?.[2];
  if (!boundary) return undefined;
  const opening = `--${boundary}\r\n`;
  if (body.length < opening.length || body.toString('latin1', 0, opening.length) !== opening) return undefined;
  const headersEnd = body.indexOf(HEADERS_END, opening.length);
  if (headersEnd < 0 || headersEnd - opening.length > MAX_HEADERS_BYTES) return undefined;
  const filename = partFilename(body.toString('latin1', opening.length, headersEnd));
  if (filename === undefined) return undefined;
  const start = headersEnd + HEADERS_END.length;
  const delimiter = Buffer.from(`\r\n--${boundary}`);
  const end = body.indexOf(delimiter, start);
  if (end <= start) return undefined; // no closing boundary, or an empty file (formidable refuses it)
  // The closing delimiter, then nothing or a line end: a second part (or anything) is not the simple form.
  const rest = body.subarray(end + delimiter.length);
  if (!(rest.length >= 2 && rest[0] === 0x2d && rest[1] === 0x2d)) return undefined;
  const after = rest.subarray(2);
  if (!(after.length === 0 || after.equals(CRLF))) return undefined;
  return { bytes: body.subarray(start, end), filename };
}

/** The file name of a part whose headers are Content-Disposition (name `file`) and a Content-Type. */
function partFilename(headers: string): string | undefined {
  let filename: string | undefined;
  let types = 0;
  for (const line of headers.split('\r\n')) {
    const colon = line.indexOf(':');
    if (colon <= 0) return undefined;
    const name = line.slice(0, colon).toLowerCase();
    // formidable skips the spaces after the colon and keeps the rest as it is.
    const value = line.slice(colon + 1).replace(/^ +/, '');
    if (name === 'content-disposition' && filename === undefined) {
      filename = DISPOSITION.exec(value)?.[1];
      if (filename === undefined) return undefined;
    } else if (name === 'content-type' && types === 0 && CONTENT_TYPE.test(value)) {
      types += 1;
    } else {
      return undefined;
    }
  }
  // Without a Content-Type formidable reads the part as a text field, whatever its file name.
  return types === 1 ? filename : undefined;
}
