// The examples are part of the public API's documentation: they must keep running.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

test('examples/custom-device runs and prints the device output', () => {
  const script = fileURLToPath(new URL('../../examples/custom-device.js', import.meta.url));
  const out = execFileSync(process.execPath, [script], { env: { ...process.env, VHOST_USER_LOG: 'warn' }, timeout: 20_000 }).toString();
  assert.equal(out.trim(), 'HELLO FROM THE GUEST');
});

test('examples/blk-ram-disk writes and reads a sector through the blk daemon', () => {
  const script = fileURLToPath(new URL('../../examples/blk-ram-disk.js', import.meta.url));
  const out = execFileSync(process.execPath, [script], { env: { ...process.env, VHOST_USER_LOG: 'warn' }, timeout: 20_000 }).toString();
  assert.equal(out, 'capacity: 32768 sectors\nwrite ok, read ok: hello, virtio-blk\n');
});

test('examples/any-dataplane sets a device up through VhostBackend over vhost-user', () => {
  const script = fileURLToPath(new URL('../../examples/any-dataplane.js', import.meta.url));
  const out = execFileSync(process.execPath, [script, 'vhost-user'], { env: { ...process.env, VHOST_USER_LOG: 'warn' }, timeout: 20_000 }).toString();
  assert.match(out, /^vhost-user: features 0x[0-9a-f]+ offered, 1 queue\(s\) set up\nvhost-user: 32 random bytes from the rng device\n$/);
});
