import { z } from 'zod';

/**
 * Problem details (RFC 9457) shared by the gateway (which answers with them) and the worker
 * (which records them on a failed job). The catalogue below is the only place a status code is
 * chosen for a kind of failure.
 */
export const problemCatalogue = {
  'invalid-request': { status: 400, title: 'The request is malformed' },
  'payload-too-large': { status: 413, title: 'The upload is larger than the limit' },
  'unsupported-media-type': { status: 415, title: 'The content is not a supported image type' },
  'undecodable-image': { status: 422, title: 'The image cannot be decoded' },
  'image-too-large': { status: 422, title: 'The image is larger than the limits' },
  'processing-deadline': { status: 422, title: 'The image took longer to process than the deadline allows' },
  'url-not-allowed': { status: 422, title: 'The URL is not allowed' },
  'url-fetch-failed': { status: 422, title: 'The image could not be fetched from the URL' },
  'input-expired': { status: 410, title: 'The uploaded image expired before a worker took the job' },
  'idempotency-job-expired': { status: 410, title: 'The job this Idempotency-Key made is no longer kept' },
  'idempotency-key-in-use': { status: 409, title: 'A request with this Idempotency-Key is still being accepted' },
  'idempotency-key-reused': { status: 422, title: 'The Idempotency-Key was used for a different request' },
  'unknown-label': { status: 422, title: "The label is not one of the job's model's labels" },
  unauthorized: { status: 401, title: 'Authentication required' },
  forbidden: { status: 403, title: 'The request is not allowed' },
  'not-found': { status: 404, title: 'Not found' },
  'request-timeout': { status: 408, title: 'The request body arrived too slowly' },
  conflict: { status: 409, title: 'The request conflicts with the state of the job' },
  cancelled: { status: 409, title: 'The job was cancelled before its result was kept' },
  'method-not-allowed': { status: 405, title: 'Method not allowed' },
  'rate-limited': { status: 429, title: 'Too many requests; retry later' },
  overloaded: { status: 503, title: 'The queue is full; retry later' },
  'not-ready': { status: 503, title: 'The service is not ready' },
  'no-worker': { status: 503, title: 'No worker serving this model is alive; retry later' },
  'deadline-unmeetable': {
    status: 503,
    title: 'The queue cannot finish the job within its deadline; retry later or allow more time',
  },
  'deadline-exceeded': { status: 504, title: "The job's deadline passed before a worker started it" },
  'inference-failed': { status: 500, title: 'The model could not process the image' },
  internal: { status: 500, title: 'Internal error' },
} as const satisfies Record<string, { status: number; title: string }>;

export type ProblemSlug = keyof typeof problemCatalogue;

export const problemSlugs = Object.keys(problemCatalogue) as [ProblemSlug, ...ProblemSlug[]];

export function problemType(slug: ProblemSlug): string {
  return `/problems/${slug}`;
}

/** A problem as a failed job records it and as the API answers it (RFC 9457 members and the slug). */
export const ProblemBody = z.object({
  type: z.string(),
  title: z.string(),
  status: z.number().int().min(400).max(599),
  detail: z.string(),
  slug: z.enum(problemSlugs),
});
export type ProblemBody = z.infer<typeof ProblemBody>;

/**
 * The RFC 9457 members of a problem, with its slug: what a failed job records, and what the
 * gateway's problem answers start from. The one place a problem becomes a body.
 */
export function problemBody(problem: ProblemError): ProblemBody {
  return {
    type: problemType(problem.slug),
    title: problemCatalogue[problem.slug].title,
    status: problem.status,
    detail: problem.detail,
    slug: problem.slug,
  };
}

/**
 * A failure caused by the input itself: retrying cannot help, so it is never retried, and it maps
 * to a 4xx. Anything else that is thrown is treated as transient.
 */
export class ProblemError extends Error {
  override readonly name = 'ProblemError';
  readonly status: number;

  constructor(
    readonly slug: ProblemSlug,
    readonly detail: string,
    readonly extra: Readonly<Record<string, unknown>> = {},
  ) {
    super(`${slug}: ${detail}`);
    this.status = problemCatalogue[slug].status;
  }

  get permanent(): boolean {
    return this.status < 500;
  }
}
