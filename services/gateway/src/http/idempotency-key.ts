import { ProblemError } from '@conveyor/shared/problem';
import type { GatewayContext } from './context.js';

/** Longest key accepted, in characters (as Stripe's; the draft sets none, and UUIDs are 36). */
export const IDEMPOTENCY_KEY_MAX_CHARS = 255;

// RFC 8941 (Structured Field Values) grammar, as far as an Item holding a String needs it: the
// string (printable ASCII, `\` escaping only `"` and `\`), then parameters, which the draft defines
// none of and which are therefore accepted and ignored. Written out rather than taken from a
// library: it is the only structured field the gateway reads.
const SF_STRING = /^"((?:[\x20\x21\x23-\x5B\x5D-\x7E]|\\["\\])*)"/;
const BARE_ITEM = String.raw`(?:-?\d{1,15}(?:\.\d{1,3})?|"(?:[\x20\x21\x23-\x5B\x5D-\x7E]|\\["\\])*"|[A-Za-z*][!#$%&'*+\-.^_\x60|~0-9A-Za-z:/]*|:[A-Za-z0-9+/=]*:|\?[01])`;
const PARAMETERS = new RegExp(String.raw`^(?:; *[a-z*][a-z0-9_\-.*]*(?:=${BARE_ITEM})?)*$`);

/**
 * A bare key, as most clients send one (Stripe's and PayPal's style: `Idempotency-Key: 8e03…`):
 * visible ASCII without a space, a quote, a comma or a semicolon, which would make it look like a
 * list or parameters.
 */
const BARE_KEY = /^[!#-+\--:<-~]{1,255}$/;

/** The plain forms of an accepted key, as the OpenAPI document states them (no parameters, no surrounding spaces). */
export const IDEMPOTENCY_KEY_PATTERN = /^(?:"(?:[ !#-\x5B\]-~]|\\["\\]){1,255}"|[!#-+\--:<-~]{1,255})$/;

/**
 * The request's Idempotency-Key (draft-ietf-httpapi-idempotency-key-header): an RFC 8941 sf-string
 * such as `"8e03978e-40d5-43e8-bc93-6894a57f9324"`, of 1–255 characters, or the same key bare
 * (BARE_KEY: what most clients send; `abc` and `"abc"` are one key). Absent: undefined. Anything
 * else is a 400 that says what is expected, never ignored: a client that believes its retries are
 * safe must not silently get a second job.
 */
export function parseIdempotencyKey(values: readonly string[] | undefined): string | undefined {
  if (values === undefined || values.length === 0) return undefined;
  if (values.length > 1) throw invalid('Idempotency-Key is given more than once');
  // RFC 8941 §4.2: leading and trailing spaces are discarded before parsing.
  const field = values[0]!.replace(/^ +| +$/g, '');
  if (BARE_KEY.test(field)) return field;
  const string = SF_STRING.exec(field);
  if (!string) {
    throw invalid(
      `Idempotency-Key must be a key of printable ASCII, quoted (RFC 8941) or bare without spaces, quotes, commas or semicolons, e.g. Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"`,
    );
  }
  if (!PARAMETERS.test(field.slice(string[0].length)))
    throw invalid('Idempotency-Key has something after its string that is not a parameter');
  const key = string[1]!.replace(/\\(["\\])/g, '$1');
  if (key.length === 0 || key.length > IDEMPOTENCY_KEY_MAX_CHARS) {
    throw invalid(`Idempotency-Key must be 1–${IDEMPOTENCY_KEY_MAX_CHARS} characters long (got ${key.length})`);
  }
  return key;
}

/** Reads the Idempotency-Key before any of the body is, so a malformed one costs no upload. */
export function idempotencyKey() {
  return async (ctx: GatewayContext, next: () => Promise<unknown>) => {
    // Every line of the header: Node would join two into one "a, b" value.
    const key = parseIdempotencyKey(ctx.req.headersDistinct['idempotency-key']);
    if (key !== undefined) ctx.state.idempotencyKey = key;
    await next();
  };
}

function invalid(detail: string): ProblemError {
  return new ProblemError('invalid-request', detail);
}
