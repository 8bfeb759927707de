import { expect } from 'chai';
import { keepRecord, type LogRecord } from '../harness/service-process.js';

describe('service-process log records', () => {
  it('keeps every record when no bound is given (tests count lines)', () => {
    const records: LogRecord[] = [];
    for (let i = 0; i < 5000; i++) keepRecord(records, { msg: `line ${i}` });
    expect(records).to.have.length(5000);
  });

  it('keeps a bounded, most-recent window for long runs (make run, soak)', () => {
    const records: LogRecord[] = [];
    for (let i = 0; i < 100_000; i++) keepRecord(records, { msg: `line ${i}` }, 1000);
    expect(records.length).to.be.at.least(1000).and.below(2000);
    expect(records.at(-1)?.msg).to.equal('line 99999');
    // The window is contiguous: nothing recent was dropped.
    const first = Number(String(records[0]?.msg).split(' ')[1]);
    expect(99_999 - first + 1).to.equal(records.length);
  });
});
