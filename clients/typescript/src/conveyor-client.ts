import type { z } from 'zod';
import {
  AcceptedJob,
  CompletedJob,
  FeedbackAccepted,
  JobStatus,
  ModelDescription,
  ModelList,
  ModelReadiness,
  Problem,
} from '@conveyor/shared/contract/api.contract';

/**
 * A small typed client of the gateway's HTTP API, over `fetch`. Its types are the zod schemas the
 * gateway answers with (`api.contract.ts`, the source of `/openapi.json`), and every answer is
 * parsed with them, so a gateway that drifted from the contract fails here loudly rather than
 * somewhere downstream. Problems (any 4xx/5xx) are thrown as ConveyorProblem.
 */
export type ImageInput =
  { readonly bytes: Uint8Array; readonly filename?: string; readonly type?: string } | { readonly url: string };

export interface PredictOptions {
  /** A model name; the deployment's default model when absent. */
  readonly model?: string;
  /** `Prefer: respond-async`: answer 202 at once. */
  readonly async?: boolean;
  /** `Prefer: wait=<seconds>`. */
  readonly waitSeconds?: number;
  /** Where the finished job is POSTed (signed; see the README's Callbacks). */
  readonly callbackUrl?: string;
  readonly requestId?: string;
  readonly signal?: AbortSignal;
}

export type PredictOutcome =
  | { readonly kind: 'completed'; readonly result: z.infer<typeof CompletedJob> }
  | { readonly kind: 'accepted'; readonly job: AcceptedJob };

/** One event of a job's event stream. */
export type JobEvent =
  | { readonly event: 'state' | 'result'; readonly data: JobStatus }
  | { readonly event: 'other'; readonly name: string; readonly data: unknown };

/** An RFC 9457 problem answer, as an error. */
/** No answer at all from the gateway (refused, unknown host, reset): the URL tried, and undici's reason as `cause`. */
export class ConveyorUnreachable extends Error {
  constructor(
    message: string,
    readonly url: string,
    cause: unknown,
  ) {
    super(message, { cause });
    this.name = 'ConveyorUnreachable';
  }
}

export class ConveyorProblem extends Error {
  override readonly name = 'ConveyorProblem';
  constructor(
    readonly status: number,
    readonly problem: Problem,
  ) {
    super(`${problem.title} (${status}): ${problem.detail}`);
  }
}

export interface ClientOptions {
  /** e.g. http://localhost:8080 */
  readonly baseUrl: string;
  /** Sent as `Authorization: Bearer <key>` (needed when the gateway requires API keys). */
  readonly apiKey?: string;
  readonly fetch?: typeof fetch;
}

export class ConveyorClient {
  private readonly base: string;
  private readonly fetchImpl: typeof fetch;

  constructor(private readonly options: ClientOptions) {
    this.base = options.baseUrl.replace(/\/+$/, '');
    this.fetchImpl = options.fetch ?? fetch;
  }

  async predict(image: ImageInput, options: PredictOptions = {}): Promise<PredictOutcome> {
    const path = options.model ? `/v1/models/${encodeURIComponent(options.model)}/predict` : '/v1/predict';
    const headers: Record<string, string> = {};
    const prefer = [
      options.async ? 'respond-async' : undefined,
      options.waitSeconds !== undefined ? `wait=${options.waitSeconds}` : undefined,
    ];
    if (prefer.some(Boolean)) headers.prefer = prefer.filter(Boolean).join(', ');
    if (options.callbackUrl) headers['callback-url'] = options.callbackUrl;
    if (options.requestId) headers['x-request-id'] = options.requestId;
    let body: string | FormData;
    if ('url' in image) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify({ url: image.url });
    } else {
      const form = new FormData();
      form.append('file', new Blob([image.bytes], { type: image.type ?? 'application/octet-stream' }), image.filename ?? 'image');
      body = form;
    }
    const response = await this.send(path, {
      method: 'POST',
      headers,
      body,
      ...(options.signal ? { signal: options.signal } : {}),
    });
    const json: unknown = await response.json();
    if (response.status === 202) return { kind: 'accepted', job: AcceptedJob.parse(json) };
    return { kind: 'completed', result: CompletedJob.parse(json) };
  }

  /** `GET /v1/jobs/{id}`: its state while waiting or running, its result or error once finished. */
  async job(id: string): Promise<JobStatus> {
    return JobStatus.parse(await (await this.send(`/v1/jobs/${encodeURIComponent(id)}`)).json());
  }

  /** Polls a job until it is finished (completed or failed), at most `timeoutMs`. */
  async waitForJob(id: string, { timeoutMs = 30_000, intervalMs = 200 } = {}): Promise<JobStatus> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const status = await this.job(id);
      if (status.status !== 'queued' && status.status !== 'active') return status;
      if (Date.now() > deadline) throw new Error(`job ${id} still ${status.status} after ${timeoutMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, intervalMs));
    }
  }

  /**
   * `GET /v1/jobs/{id}/events` (Server-Sent Events) as an async iterable: `state` events, then one
   * `result`; it ends when the gateway ends the stream (or `signal` aborts). Read over fetch rather
   * than EventSource, so the API key goes in a header.
   */
  async *events(id: string, signal?: AbortSignal): AsyncGenerator<JobEvent> {
    const response = await this.send(`/v1/jobs/${encodeURIComponent(id)}/events`, {
      headers: { accept: 'text/event-stream' },
      ...(signal ? { signal } : {}),
    });
    if (!response.body) return;
    const decoder = new TextDecoder();
    let buffer = '';
    for await (const chunk of response.body) {
      buffer += decoder.decode(chunk as Uint8Array, { stream: true });
      let end: number;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = 'message';
        const data: string[] = [];
        for (const line of block.split('\n')) {
          if (line.startsWith('event:')) event = line.slice(6).trim();
          else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
        }
        if (data.length === 0) continue; // a comment (keep-alive) or a retry hint
        const parsed: unknown = JSON.parse(data.join('\n'));
        yield event === 'state' || event === 'result'
          ? { event, data: JobStatus.parse(parsed) }
          : { event: 'other', name: event, data: parsed };
      }
    }
  }

  async models(): Promise<ModelList> {
    return ModelList.parse(await (await this.send('/v1/models')).json());
  }

  async model(name: string): Promise<ModelDescription> {
    return ModelDescription.parse(await (await this.send(`/v1/models/${encodeURIComponent(name)}`)).json());
  }

  /** The readiness probe: true while a live worker has the model warm. */
  async ready(name: string): Promise<boolean> {
    const response = await this.send(`/v2/models/${encodeURIComponent(name)}/ready`, {}, [503]);
    return ModelReadiness.parse(await response.json()).ready;
  }

  async feedback(jobId: string, label: string): Promise<z.infer<typeof FeedbackAccepted>> {
    const response = await this.send('/v1/feedback', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ jobId, label }),
    });
    return FeedbackAccepted.parse(await response.json());
  }

  private async send(path: string, init: RequestInit = {}, alsoOk: readonly number[] = []): Promise<Response> {
    const headers = new Headers(init.headers);
    if (this.options.apiKey) headers.set('authorization', `Bearer ${this.options.apiKey}`);
    const url = `${this.base}${path}`;
    let response: Response;
    try {
      response = await this.fetchImpl(url, { ...init, headers });
    } catch (error) {
      // undici says only "fetch failed" and keeps the reason (ECONNREFUSED, ENOTFOUND, …) in `cause`:
      // a user needs the URL that was tried and why, to see a wrong port or host at once.
      const cause = (error as { cause?: { code?: string; message?: string } }).cause;
      const why = cause?.code ?? cause?.message ?? (error as Error).message;
      throw new ConveyorUnreachable(`${init.method ?? 'GET'} ${url}: the gateway could not be reached (${why})`, url, error);
    }
    if (response.ok || alsoOk.includes(response.status)) return response;
    const text = await response.text();
    let problem: Problem;
    try {
      problem = Problem.parse(JSON.parse(text));
    } catch {
      throw new Error(`${init.method ?? 'GET'} ${path}: HTTP ${response.status} without a problem body: ${text.slice(0, 200)}`);
    }
    throw new ConveyorProblem(response.status, problem);
  }
}
