import { UnrecoverableError } from 'bullmq';
import { expect } from 'chai';
import pino from 'pino';
import { Webhook } from 'standardwebhooks';
import type { CallbackState } from '@conveyor/shared/contract/api.contract';
import type { CallbackJob, JobResult } from '@conveyor/shared/contract/jobs.contract';
import { problemBody, ProblemError } from '@conveyor/shared/problem';
import { completedResult } from '../../../test/support/results.js';
import { CallbackDelivery, type Post } from '../src/callbacks/callback-delivery.js';
import type { CallbackRecords } from '../src/callbacks/callback-store.js';

/**
 * One try of a callback delivery with a fake store and a fake POST (no Redis, no socket): what is
 * sent, how it is signed, what state each answer leaves, and when the client's share comes back.
 */
const SECRET = 'whsec_' + Buffer.from('a secret of thirty-two bytes!!!!').toString('base64');
const silent = pino({ level: 'silent' });

class FakeRecords implements CallbackRecords {
  readonly updates: Partial<CallbackState>[] = [];
  readonly released: string[] = [];
  update(_jobId: string, change: Partial<CallbackState>): Promise<void> {
    this.updates.push(change);
    return Promise.resolve();
  }
  release(client: string, jobId: string): Promise<void> {
    this.released.push(`${client} ${jobId}`);
    return Promise.resolve();
  }
}

interface Sent {
  url: string;
  body: string;
  headers: Record<string, string>;
}

function setUp(answer: () => Promise<number>) {
  const records = new FakeRecords();
  const sent: Sent[] = [];
  const post: Post = (url, body, headers) => {
    sent.push({ url: url.href, body, headers });
    return answer();
  };
  const delivery = new CallbackDelivery(records, post, Buffer.from(SECRET.slice(6), 'base64'), 60, silent);
  return { records, sent, delivery };
}

const data: CallbackJob = {
  kind: 'callback',
  version: 1,
  jobId: 'job-1',
  requestId: 'req-1',
  url: 'https://receiver.example/hook',
  webhookId: 'msg_job-1',
  client: 'key:a',
};
const result: JobResult = completedResult('job-1');

async function failure(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => undefined,
    (error: unknown) => error,
  );
}

describe('callback delivery (fakes, no Redis)', () => {
  it('POSTs the result signed as Standard Webhooks verify it, records it delivered and gives the share back', async () => {
    const { records, sent, delivery } = setUp(() => Promise.resolve(204));
    await delivery.attempt({ data, attempt: 1, last: false }, result);
    expect(sent).to.have.length(1);
    const { body, headers, url } = sent[0]!;
    expect(url).to.equal(data.url);
    const verified = new Webhook(SECRET).verify(body, headers) as { type: string; data: JobResult };
    expect(verified.type).to.equal('job.completed');
    expect(verified.data.id).to.equal('job-1');
    expect(headers['webhook-id']).to.equal('msg_job-1');
    expect(records.updates).to.have.length(1);
    expect(records.updates[0]).to.include({ state: 'delivered', attempts: 1, lastStatus: 204 });
    expect(records.released).to.deep.equal(['key:a job-1']);
  });

  it('calls a failed job job.failed', async () => {
    const { sent, delivery } = setUp(() => Promise.resolve(200));
    const { prediction: _p, timings: _t, input: _i, ...base } = completedResult('job-1');
    const failed: JobResult = {
      ...base,
      status: 'failed',
      error: problemBody(new ProblemError('inference-failed', 'The model could not process this image')),
    };
    await delivery.attempt({ data, attempt: 1, last: false }, failed);
    expect((JSON.parse(sent[0]!.body) as { type: string }).type).to.equal('job.failed');
  });

  it('leaves a refused try pending (to be retried) and keeps the share', async () => {
    const { records, delivery } = setUp(() => Promise.resolve(500));
    const error = await failure(delivery.attempt({ data, attempt: 1, last: false }, result));
    expect(error).to.be.instanceOf(Error).and.not.instanceOf(UnrecoverableError);
    expect(records.updates[0]).to.include({ state: 'pending', attempts: 1, lastStatus: 500 });
    expect(records.updates[0]?.lastError).to.equal('the receiver answered HTTP 500');
    expect(records.released).to.deep.equal([]);
  });

  it('fails the last try for good and gives the share back', async () => {
    const { records, delivery } = setUp(() => Promise.resolve(302));
    await failure(delivery.attempt({ data, attempt: 3, last: true }, result));
    expect(records.updates[0]).to.include({ state: 'failed', attempts: 3, lastStatus: 302 });
    expect(records.released).to.deep.equal(['key:a job-1']);
  });

  it('records a connection error with its code, and retries it', async () => {
    const refused = Object.assign(new Error('connect ECONNREFUSED 203.0.113.1:443'), { code: 'ECONNREFUSED' });
    const { records, delivery } = setUp(() => Promise.reject(refused));
    const error = await failure(delivery.attempt({ data, attempt: 2, last: false }, result));
    expect(error).to.equal(refused);
    expect(records.updates[0]).to.include({ state: 'pending', attempts: 2 });
    expect(records.updates[0]?.lastError).to.equal('ECONNREFUSED: connect ECONNREFUSED 203.0.113.1:443');
  });

  it('fails at once, unrecoverably, when the filtering agents refuse the address', async () => {
    const { records, delivery } = setUp(() => Promise.reject(new Error('DNS lookup 10.0.0.1(family:4, host:x) is not allowed')));
    const error = await failure(delivery.attempt({ data, attempt: 1, last: false }, result));
    expect(error).to.be.instanceOf(UnrecoverableError);
    expect(records.updates[0]).to.include({ state: 'failed', attempts: 1 });
    expect(records.released).to.deep.equal(['key:a job-1']);
  });

  it('abandons a delivery whose job never finished: failed, share given back, nothing sent', async () => {
    const { records, sent, delivery } = setUp(() => Promise.resolve(200));
    await delivery.abandon(data, 'the job never finished');
    expect(sent).to.deep.equal([]);
    expect(records.updates).to.deep.equal([{ state: 'failed', lastError: 'the job never finished' }]);
    expect(records.released).to.deep.equal(['key:a job-1']);
  });
});
