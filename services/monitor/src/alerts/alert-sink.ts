import { createHmac, randomUUID } from 'node:crypto';
import type { Redis } from '@conveyor/shared/redis';
import type { AlertEvent } from '@conveyor/shared/contract/events.contract';
import type { Logger } from '@conveyor/shared/logger';

/**
 * Where alerts go: a structured log line (`event: "alert"`), the alerts stream, and an optional
 * webhook — a JSON POST signed with HMAC-SHA256 over `<timestamp>.<body>` in
 * `X-Conveyor-Signature: t=<unix seconds>,v1=<hex>`, retried with exponential backoff without
 * holding up the monitor.
 */
export interface WebhookOptions {
  readonly url: string;
  readonly secret?: string;
  readonly maxAttempts: number;
}

export function signature(secret: string, timestamp: number, body: string): string {
  return `t=${timestamp},v1=${createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex')}`;
}

export class AlertSink {
  private readonly inFlight = new Set<Promise<void>>();

  constructor(
    private readonly redis: Redis,
    private readonly stream: string,
    private readonly log: Logger,
    private readonly webhook?: WebhookOptions,
  ) {}

  async emit(alert: Omit<AlertEvent, 'kind' | 'version' | 'id' | 'at'>): Promise<AlertEvent> {
    const event: AlertEvent = { kind: 'alert', version: 1, id: randomUUID(), at: new Date().toISOString(), ...alert };
    const line = {
      event: 'alert',
      severity: event.severity,
      metric: event.metric,
      feature: event.feature,
      value: event.value,
      threshold: event.threshold,
      window: event.window,
      model: event.model,
      modelName: event.name ?? event.model.name,
      modelVersion: event.model.version,
      state: event.state,
      alertId: event.id,
    };
    if (event.severity === 'alert') this.log.error(line, event.message);
    else this.log.warn(line, event.message);
    await this.redis.xadd(this.stream, 'MAXLEN', '~', 10_000, '*', 'event', JSON.stringify(event));
    if (this.webhook) {
      const delivery = this.deliver(event, this.webhook).finally(() => this.inFlight.delete(delivery));
      this.inFlight.add(delivery);
    }
    return event;
  }

  /** Waits for webhook deliveries still retrying (at shutdown). */
  async drain(): Promise<void> {
    await Promise.allSettled([...this.inFlight]);
  }

  private async deliver(event: AlertEvent, webhook: WebhookOptions): Promise<void> {
    const body = JSON.stringify(event);
    for (let attempt = 1; attempt <= webhook.maxAttempts; attempt++) {
      const timestamp = Math.floor(Date.now() / 1000);
      const headers: Record<string, string> = {
        'content-type': 'application/json',
        'user-agent': 'conveyor-monitor',
        'x-conveyor-alert-id': event.id,
      };
      if (webhook.secret) headers['x-conveyor-signature'] = signature(webhook.secret, timestamp, body);
      try {
        const response = await fetch(webhook.url, { method: 'POST', body, headers, signal: AbortSignal.timeout(5000) });
        await response.body?.cancel();
        if (response.ok) {
          this.log.debug({ alertId: event.id, attempt }, 'webhook delivered');
          return;
        }
        // A 4xx other than 408/429 will not get better by retrying.
        if (response.status < 500 && response.status !== 408 && response.status !== 429) {
          this.log.error({ alertId: event.id, status: response.status }, 'webhook refused the alert');
          return;
        }
        this.log.warn({ alertId: event.id, status: response.status, attempt }, 'webhook failed; retrying');
      } catch (error) {
        this.log.warn({ err: error, alertId: event.id, attempt }, 'webhook unreachable; retrying');
      }
      if (attempt < webhook.maxAttempts) await new Promise((r) => setTimeout(r, 500 * 2 ** (attempt - 1)));
    }
    this.log.error({ alertId: event.id, attempts: webhook.maxAttempts }, 'webhook delivery abandoned');
  }
}
