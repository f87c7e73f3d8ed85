// Log records as operators and log collectors read them: timestamped text, one JSON object per
// line, a level filter, and pino-compatible loggers accepted where a Logger is.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StderrLogger, toLogger, type PinoLikeLogger } from '../../src/log.js';

test('text records: ISO timestamp, name, level, message, key=value fields; below the level nothing', () => {
  const lines: string[] = [];
  const l = new StderrLogger('vhost-user-blk', { level: 'info', write: (s) => lines.push(s) });
  l.log('debug', 'hidden');
  l.log('info', 'front-end connected', { connection: 3, request: 'SET_MEM_TABLE', note: 'two words' });
  assert.equal(lines.length, 1);
  assert.match(lines[0]!, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z vhost-user-blk info: front-end connected connection=3 request=SET_MEM_TABLE note="two words"\n$/);
  assert.equal(l.enabled('debug'), false);
  const bare: string[] = [];
  new StderrLogger('x', { timestamps: false, write: (s) => bare.push(s) }).log('warn', 'w');
  assert.deepEqual(bare, ['x warn: w\n']);
});

test('json records parse as one object per line, bigints as strings', () => {
  const lines: string[] = [];
  const l = new StderrLogger('vhost-user-rng', { format: 'json', level: 'debug', write: (s) => lines.push(s) });
  l.log('debug', 'features', { features: 0x1_4000_0000n, queue: 0 });
  l.log('error', 'line "with" quotes\nand a newline');
  assert.equal(lines.length, 2);
  for (const line of lines) assert.ok(line.endsWith('\n') && !line.slice(0, -1).includes('\n'));
  const [a, b] = lines.map((x) => JSON.parse(x) as Record<string, unknown>);
  assert.equal(a!.level, 'debug');
  assert.equal(a!.name, 'vhost-user-rng');
  assert.equal(a!.features, '5368709120');
  assert.equal(a!.queue, 0);
  assert.ok(!Number.isNaN(Date.parse(a!.time as string)));
  assert.equal(b!.msg, 'line "with" quotes\nand a newline');
});

test('a pino-compatible logger is accepted: (fields, message) per level, isLevelEnabled honoured', () => {
  const got: [string, object, string][] = [];
  const pino: PinoLikeLogger = {
    debug: (o, m) => got.push(['debug', o, m]),
    info: (o, m) => got.push(['info', o, m]),
    warn: (o, m) => got.push(['warn', o, m]),
    error: (o, m) => got.push(['error', o, m]),
    isLevelEnabled: (lvl) => lvl !== 'debug',
  };
  const l = toLogger(pino);
  l.log('warn', 'bad request', { request: 'SET_VRING_ADDR', size: 7n });
  l.log('info', 'plain');
  assert.deepEqual(got, [['warn', { request: 'SET_VRING_ADDR', size: '7' }, 'bad request'], ['info', {}, 'plain']]);
  assert.equal(l.enabled?.('debug'), false);
  const ours = new StderrLogger('x', { write: () => undefined });
  assert.equal(toLogger(ours), ours, 'a Logger passes through');
});
