import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Queue } from 'bullmq';
import { createRedis, waitForReady } from '@conveyor/shared/redis';
import { createLogger } from '@conveyor/shared/logger';
import { keys as keysOf } from '@conveyor/shared/contract/queue.contract';
import { Admission } from '../services/gateway/src/jobs/admission.js';
import { JobSubmitter } from '../services/gateway/src/jobs/job-submitter.js';
import { startCluster } from './support/redis-topology.js';
const cluster = await startCluster(mkdtempSync(path.join(os.tmpdir(), 'cl-')));
const log = createLogger('probe', 'debug');
const c = createRedis(cluster.url, 'producer', 'probe', log);
const qc = createRedis(cluster.url, 'producer', 'probe', log, { enableAutoPipelining: false });
await waitForReady(c, 10000); await waitForReady(qc, 10000);
const k = keysOf('{x}');
const q = new Queue('inference', { connection: qc, prefix: '{x}' });
const adm = new Admission(c, { reserved: k.admissionReserved, queuedBytes: k.queuedBytes }, { maxDepth: 100, maxQueuedBytes: 1e9 });
try { const r = await adm.admit(q, 'a1b2', 100); console.log('admit ok'); r.release(); } catch (e) { console.log('ERR adm', e); }
try { console.log(await c.publish('{x}:replies:g', 'hi')); } catch (e) { console.log('ERR pub', e); }
await q.close(); c.disconnect(); qc.disconnect(); await cluster.stop();
