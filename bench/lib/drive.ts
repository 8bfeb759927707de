/**
 * The closed-loop driver the build-against-build benchmarks share: `n` predict requests of one image
 * over `concurrency` connections, each answered 200 (anything else stops the run), and a wait for a
 * condition with a deadline.
 */
export async function drive(url: string, image: Buffer, n: number, concurrency: number): Promise<void> {
  let next = 0;
  const one = async () => {
    while (next < n) {
      next++;
      const form = new FormData();
      form.append('file', new Blob([image]), 'image');
      const response = await fetch(url, { method: 'POST', body: form });
      if (response.status !== 200) throw new Error(`HTTP ${response.status}: ${await response.text()}`);
      await response.arrayBuffer();
    }
  };
  await Promise.all(Array.from({ length: concurrency }, one));
}

export async function until(what: string, condition: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

export const median = (xs: readonly number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

export const round3 = (x: number): number => Math.round(x * 1000) / 1000;
