/** Small helpers around fetch for talking to a gateway under test. */
export interface Reply<T = Record<string, unknown>> {
  status: number;
  headers: Headers;
  body: T;
}

export async function request<T = Record<string, unknown>>(url: string, init: RequestInit = {}): Promise<Reply<T>> {
  const response = await fetch(url, init);
  const text = await response.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  return { status: response.status, headers: response.headers, body: body as T };
}

export function uploadForm(bytes: Buffer, filename = 'image.bin', field = 'file', type = 'application/octet-stream'): FormData {
  const form = new FormData();
  form.append(field, new Blob([bytes], { type }), filename);
  return form;
}

export function predict(base: string, bytes: Buffer, headers: Record<string, string> = {}): Promise<Reply> {
  return request(`${base}/v1/predict`, { method: 'POST', body: uploadForm(bytes), headers });
}

/** POST /v1/models/{model}/predict. */
export function predictModel(base: string, model: string, bytes: Buffer, headers: Record<string, string> = {}): Promise<Reply> {
  return request(`${base}/v1/models/${model}/predict`, { method: 'POST', body: uploadForm(bytes), headers });
}

export async function pollUntilDone(base: string, id: string, timeoutMs = 20_000): Promise<Reply> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const reply = await request(`${base}/v1/jobs/${id}`);
    if (reply.status !== 200 || (reply.body.status !== 'queued' && reply.body.status !== 'active')) return reply;
    if (Date.now() > deadline) throw new Error(`job ${id} still ${JSON.stringify(reply.body.status)} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Runs `tasks` with at most `limit` in flight. */
export async function pool<T>(
  items: readonly T[],
  limit: number,
  task: (item: T, index: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        await task(items[i]!, i);
      }
    }),
  );
}
