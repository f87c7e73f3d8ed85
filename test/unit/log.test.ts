import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RateLimitedLogger, type LogLevel, type Logger } from '../../src/log.js';

test('RateLimitedLogger passes a burst of warnings per window, then reports how many it dropped', () => {
  const out: Array<[LogLevel, string]> = [];
  const sink: Logger = { log: (l, m) => { out.push([l, m]); } };
  let now = 1_000_000;
  const log = new RateLimitedLogger(sink, 3, 1000, () => now);
  for (let i = 0; i < 10; i++) log.log('warn', `bad request ${i}`);
  log.log('info', 'connected'); // info is never limited
  assert.deepEqual(out.map((r) => r[1]), ['bad request 0', 'bad request 1', 'bad request 2', 'connected']);
  now += 1500;
  log.log('error', 'next window');
  assert.deepEqual(out.slice(4), [['warn', '7 similar log records suppressed in the last 2 s'], ['error', 'next window']]);
});
