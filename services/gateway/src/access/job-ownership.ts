import type { JobStore } from '@conveyor/shared/contract/job-store';
import type { KeyIdentity } from '../http/context.js';

/**
 * Jobs belong to the API key that made them. With keys required, a job is readable — its result,
 * its event stream, its callback details (whose URL may carry the receiver's token), its feedback —
 * only with the key whose id was stored as its owner (JobStore.putOwner), or with an `admin` key.
 * Routes answer any other key exactly as they answer a job that does not exist (404), so a key
 * cannot even learn that another's job id is real. A job with no owner on record (made while keys
 * were off, or by a gateway of the previous release) is an admin's only.
 *
 * Without keys there is no one to tell apart: a job id is a random UUID (122 random bits, never
 * listed by the API), and whoever holds it may read the job, as before.
 */
export class JobOwnership {
  constructor(private readonly jobs: Pick<JobStore, 'readOwner'>) {}

  /** Whether the caller (its API key, or undefined when keys are off) may see the job `jobId`. */
  async mayRead(caller: KeyIdentity | undefined, jobId: string): Promise<boolean> {
    if (!caller || caller.scopes.includes('admin')) return true;
    return (await this.jobs.readOwner(jobId)) === caller.id;
  }
}
