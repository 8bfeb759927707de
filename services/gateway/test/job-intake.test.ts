import { expect } from 'chai';
import type { CallbackState } from '@conveyor/shared/contract/api.contract';
import type { FairPlace, QueuePlace, Tenant } from '../src/http/context.js';
import { JobIntake, type JobIntakeParts, type NewJob } from '../src/jobs/job-intake.js';
import type { Submission } from '../src/jobs/job-submitter.js';
import type { InferenceQueue } from '../src/jobs/model-queues.js';
import type { Ticket } from '../src/jobs/result-waiter.js';

/**
 * Job intake with fakes at its boundary (no Redis): what it asks of the reply waiter, the callback
 * dispatcher, the submitter, admission and fair queuing, in which order, and what it undoes when
 * queueing fails.
 */
class Fakes {
  readonly calls: string[] = [];
  submitError: Error | undefined;
  callbackRefusal: Error | undefined;
  submitted: Submission | undefined;
  placeError: Error | undefined;
  readonly queue = { name: 'inference:digits' } as unknown as InferenceQueue;

  ticket(jobId: string): Ticket {
    return {
      wait: () => Promise.resolve(undefined),
      cancel: () => this.calls.push(`ticket.cancel ${jobId}`),
    };
  }

  place(jobId: string): QueuePlace {
    return {
      jobId,
      queued: (bytes) => this.calls.push(`place.queued ${bytes}`),
      release: () => this.calls.push('place.release'),
    };
  }

  parts(withFair = false): JobIntakeParts {
    return {
      queues: { get: () => this.queue },
      admission: {
        admit: (_queue, jobId, bytes) => {
          this.calls.push(`admit ${bytes}`);
          return Promise.resolve(this.place(jobId));
        },
      },
      fair: withFair
        ? {
            place: (_queue, tenant: Tenant, _jobId, priority) => {
              this.calls.push(`fair.place ${tenant.id} ${priority}`);
              if (this.placeError) return Promise.reject(this.placeError);
              return Promise.resolve({ priority: 7, charge: (pixels: number) => this.calls.push(`fair.charge ${pixels}`) });
            },
          }
        : undefined,
      submitter: {
        submit: (submission) => {
          this.calls.push('submit');
          this.submitted = submission;
          return this.submitError ? Promise.reject(this.submitError) : Promise.resolve();
        },
      },
      waiter: {
        gatewayId: 'gw-1',
        register: (jobId) => {
          this.calls.push(`ticket.register ${jobId}`);
          return this.ticket(jobId);
        },
      },
      callbacks: {
        reserve: (client, jobId) => {
          this.calls.push(`callback.reserve ${client} ${jobId}`);
          return this.callbackRefusal ? Promise.reject(this.callbackRefusal) : Promise.resolve();
        },
        schedule: (jobId, url) => {
          this.calls.push(`callback.schedule ${jobId}`);
          const state: CallbackState = { url: url.href, state: 'pending', attempts: 0, webhookId: `msg_${jobId}` };
          return Promise.resolve(state);
        },
        cancel: (jobId, client) => {
          this.calls.push(`callback.cancel ${jobId} ${client}`);
          return Promise.resolve();
        },
      },
    };
  }
}

function newJob(fakes: Fakes, overrides: Partial<NewJob> = {}): NewJob {
  const fair: FairPlace = { priority: 3, charge: (pixels) => fakes.calls.push(`fair.charge ${pixels}`) };
  return {
    model: 'digits',
    jobId: 'job-1',
    requestId: 'req-1',
    acceptedAt: 1_700_000_000_000,
    input: { kind: 'upload', bytes: Buffer.alloc(10) },
    bytes: Buffer.alloc(10),
    facts: { format: 'png', width: 28, height: 20 },
    place: fakes.place('job-1'),
    fair,
    owner: 'key-1',
    client: 'key:key-1',
    waits: true,
    ...overrides,
  };
}

describe('job intake (fakes, no Redis)', () => {
  it('registers the ticket, schedules the callback, then submits; counts the job queued and gives the place back', async () => {
    const fakes = new Fakes();
    const job = await new JobIntake(fakes.parts()).create(
      newJob(fakes, { callbackUrl: new URL('https://receiver.example/hook') }),
    );
    expect(fakes.calls).to.deep.equal([
      'ticket.register job-1',
      'callback.reserve key:key-1 job-1',
      'callback.schedule job-1',
      'submit',
      'fair.charge 560',
      'place.queued 10',
      'place.release',
    ]);
    expect(job.jobId).to.equal('job-1');
    expect(job.ticket).to.not.equal(undefined);
    expect(job.callback).to.include({ state: 'pending', url: 'https://receiver.example/hook' });
    expect(fakes.submitted).to.include({ jobId: 'job-1', model: 'digits', replyTo: 'gw-1', owner: 'key-1', priority: 3 });
  });

  it('asks for no reply when nobody waits and no callback follows the job', async () => {
    const fakes = new Fakes();
    const job = await new JobIntake(fakes.parts()).create(newJob(fakes, { waits: false }));
    expect(job.ticket).to.equal(undefined);
    expect(job.callback).to.equal(undefined);
    expect(fakes.submitted?.replyTo).to.equal(undefined);
    expect(fakes.calls).to.not.include('ticket.register job-1');
  });

  it('asks for the reply for a callback alone, so its delivery follows the result at once', async () => {
    const fakes = new Fakes();
    await new JobIntake(fakes.parts()).create(
      newJob(fakes, { waits: false, callbackUrl: new URL('https://receiver.example/hook') }),
    );
    expect(fakes.submitted?.replyTo).to.equal('gw-1');
  });

  it('undoes the ticket and the callback when queueing fails, and still gives the place back', async () => {
    const fakes = new Fakes();
    fakes.submitError = new Error('Redis went away');
    const creating = new JobIntake(fakes.parts()).create(
      newJob(fakes, { callbackUrl: new URL('https://receiver.example/hook') }),
    );
    const error = await creating.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).to.equal(fakes.submitError);
    expect(fakes.calls).to.deep.equal([
      'ticket.register job-1',
      'callback.reserve key:key-1 job-1',
      'callback.schedule job-1',
      'submit',
      'ticket.cancel job-1',
      'callback.cancel job-1 key:key-1',
      'place.release',
    ]);
  });

  it('cancels nothing of a callback it was refused (over the client share), and queues nothing', async () => {
    const fakes = new Fakes();
    fakes.callbackRefusal = new Error('429');
    const creating = new JobIntake(fakes.parts()).create(
      newJob(fakes, { callbackUrl: new URL('https://receiver.example/hook') }),
    );
    const error = await creating.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).to.equal(fakes.callbackRefusal);
    expect(fakes.calls).to.deep.equal([
      'ticket.register job-1',
      'callback.reserve key:key-1 job-1',
      'ticket.cancel job-1',
      'place.release',
    ]);
  });

  it('admits with a fair place at the request priority, and gives the admission back when fair queuing refuses', async () => {
    const fakes = new Fakes();
    const intake = new JobIntake(fakes.parts(true));
    const admitted = await intake.admit('digits', { id: 'key:a', weight: 1, maxPriority: 'high' }, 1234, 'high');
    expect(admitted.fair?.priority).to.equal(7);
    expect(fakes.calls).to.deep.equal(['admit 1234', 'fair.place key:a high']);

    fakes.calls.length = 0;
    fakes.placeError = new Error('over its share');
    const refused = await intake.admit('digits', { id: 'key:a', weight: 1, maxPriority: 'normal' }, 1234).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(refused).to.equal(fakes.placeError);
    expect(fakes.calls).to.deep.equal(['admit 1234', 'fair.place key:a normal', 'place.release']);
  });

  it('admits and places in one call when admission and fair queuing both can (one round trip)', async () => {
    const fakes = new Fakes();
    const parts = fakes.parts(true);
    const intake = new JobIntake({
      ...parts,
      admission: {
        ...parts.admission,
        admitPlaced: (_queue, jobId, bytes, _deadline, step) => {
          fakes.calls.push(`admitPlaced ${bytes} ${step.args[0]} ${step.args[4]}`);
          return Promise.resolve({ place: fakes.place(jobId), fair: step.settle([42, 1]) });
        },
      },
      fair: {
        ...parts.fair!,
        step: (_queue, tenant, jobId, priority) => ({
          keys: ['p', 'w', 'f', 'places', 'r'],
          args: [tenant.id, tenant.weight, jobId, 1, priority === 'high' ? 1 : 2, 8, 60, '0', '1'],
          settle: ([priority]) => ({ priority, charge: () => undefined }),
        }),
      },
    });
    const admitted = await intake.admit('digits', { id: 'key:a', weight: 1, maxPriority: 'high' }, 1234, 'high');
    expect(admitted.fair?.priority).to.equal(42);
    expect(admitted.place.jobId).to.be.a('string');
    expect(fakes.calls).to.deep.equal(['admitPlaced 1234 key:a 1']);
  });
});
