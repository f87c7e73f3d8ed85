// The package's public surface, resolved the way a consumer resolves it: through the `exports` map
// (Node lets a package import itself by name). Raw syscalls (src/sys: mmap, wrapMemory, ioctl) are
// not reachable; the root, the devices and the front-end driver are.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

// A variable specifier: resolved at run time through package.json, not by the compiler.
const load = (specifier: string): Promise<Record<string, unknown>> => import(specifier) as Promise<Record<string, unknown>>;

test('package exports: root, devices/blk, devices/rng, driver and package.json resolve', async () => {
  const root = await load('vhost-user');
  assert.equal(typeof root['VhostUserDaemon'], 'function');
  assert.equal(typeof root['SysError'], 'function', 'errors thrown by the API stay catchable by type');
  assert.equal(typeof root['onGuestMemoryFault'], 'function');
  assert.equal(root['sys'], undefined, 'the raw syscall layer is not exported');
  for (const raw of ['mmap', 'wrapMemory', 'ioctl', 'dup', 'memfdCreate']) assert.equal(root[raw], undefined, raw);
  assert.equal(typeof (await load('vhost-user/devices/blk'))['VhostUserBlkBackend'], 'function');
  assert.equal(typeof (await load('vhost-user/devices/rng'))['VhostUserRngBackend'], 'function');
  assert.equal(typeof (await load('vhost-user/devices/net'))['VhostUserNetBackend'], 'function');
  const driver = await load('vhost-user/driver');
  assert.equal(typeof driver['FrontendMemory'], 'function');
  assert.equal(typeof driver['setupQueue'], 'function');
  const pkg = createRequire(import.meta.url)('vhost-user/package.json') as { name: string };
  assert.equal(pkg.name, 'vhost-user');
});

test('package exports: internal modules are not importable from outside', async () => {
  for (const internal of ['vhost-user/dist/src/sys/index.js', 'vhost-user/sys', 'vhost-user/dist/src/sys/native.js', 'vhost-user/src/index.ts']) {
    await assert.rejects(load(internal), (e: unknown) => (e as { code?: string }).code === 'ERR_PACKAGE_PATH_NOT_EXPORTED', internal);
  }
});
