import { readFileSync } from 'node:fs';
import { expect } from 'chai';
import {
  measured,
  PRICES,
  readMeasured,
  pageWithCostTable,
  COST_PAGE,
  renderCostTable,
  type Evidence,
} from '../scripts/cost/cost-table.js';

describe('The cost table of the training page', () => {
  it('is what scripts/cost/cost-table.ts makes of the committed record of the remote training run', () => {
    const page = readFileSync(COST_PAGE, 'utf8');
    expect(pageWithCostTable(page)).to.equal(page);
  });

  it('states every price with its source page and the date it was taken as known', () => {
    for (const [name, price] of Object.entries(PRICES)) {
      expect(price.usd, name).to.be.greaterThan(0);
      expect(price.source, name).to.match(/^https:\/\/aws\.amazon\.com\/[a-z0-9]+\/pricing\//);
      expect(price.asOf, name).to.match(/^\d{4}-\d{2}-\d{2}$/);
    }
    const table = renderCostTable(readMeasured());
    for (const price of Object.values(PRICES)) expect(table).to.contain(price.source);
  });

  it('multiplies the measured figures by the prices (a one-hour run on a t3.medium costs its hourly price plus its requests)', () => {
    const evidence: Evidence = {
      recordedAt: '2026-01-01T00:00:00Z',
      flowRun: { name: 'x', state: 'Completed', wallSeconds: 3600 },
      usage: [{ step: 'train', wall_s: 3500, cpu_s: 3400, max_rss_mb: 3000 }],
      s3Requests: { total: 3000, byClass: { put_copy_post_list: 1000, get_and_other: 2000 } },
      bucket: { addedVersions: 10, addedNoncurrentVersions: 0, addedBytes: 2 ** 30 },
      mlflow: { runs: [{ runId: 'r', s3: { bytesAllVersions: 2 ** 29 } }], registered: { runId: 'r' } },
    };
    const table = renderCostTable(measured(evidence, 30));
    const requests = 0.005 + 2 * 0.0004;
    expect(table).to.contain(
      `| EC2 t3.medium (burstable: a long run spends CPU credits), started for the run | $0.0416 | $${requests.toFixed(4)} | $${(0.0416 + requests).toFixed(4)} |`,
    );
    // 3000 MB of peak memory needs 3 GB of Fargate memory beside its vCPU.
    expect(table).to.contain(`ECS on Fargate, 1 vCPU + 3 GB | $${(0.04048 + 3 * 0.004445).toFixed(4)} |`);
    // One GiB a run, 52/12 runs a month: 1 month kept is 4.33 GiB at $0.023.
    expect(table).to.contain(`| 1 month | ${((52 / 12) * 1024).toFixed(1)} MiB, $${((52 / 12) * 0.023).toFixed(4)}/month |`);
  });

  it('refuses a record of a run that did not complete', () => {
    const evidence = { flowRun: { state: 'Failed' } } as Evidence;
    expect(() => measured(evidence, 30)).to.throw(/not Completed/);
  });
});
