import { readFileSync } from 'node:fs';
import { expect } from 'chai';
import { readmeWithTable } from '../scripts/config-table.js';

describe('README', () => {
  it('documents exactly the configuration the services accept (npm run docs:config regenerates it)', () => {
    const readme = readFileSync('README.md', 'utf8');
    expect(readmeWithTable(readme)).to.equal(readme);
  });
});
