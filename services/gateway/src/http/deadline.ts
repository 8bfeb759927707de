/**
 * The caller's processing deadline: `Prefer: deadline=<seconds>` (RFC 7240 preference syntax, a
 * parameter of this API's own), counted from the request's arrival at the gateway. Relative, as
 * `Prefer: wait=` and gRPC's `grpc-timeout` are, so the caller's clock does not have to agree with
 * the servers'. HTTP has no standard for a processing deadline (draft-loreto-http-timeout expired in
 * 2010); `Prefer` is the registered header for a client's wishes about how a request is processed,
 * it passes proxies that keep end-to-end headers, and `Preference-Applied: deadline=<s>` tells the
 * caller it was taken into account. A value that is not a positive number is ignored (RFC 7240:
 * preferences not understood are ignored), and so not echoed.
 */
export function parseDeadline(header: string, maxSeconds: number): number | undefined {
  let seconds: number | undefined;
  for (const token of header.split(/[,;]/)) {
    const [name, value] = token.split('=', 2).map((s) => s.trim().toLowerCase());
    if (name !== 'deadline' || !value) continue;
    const parsed = Number(value.replace(/^"(.*)"$/, '$1'));
    if (Number.isFinite(parsed) && parsed > 0) seconds = parsed;
  }
  return seconds === undefined ? undefined : Math.min(seconds, maxSeconds);
}
