#!/usr/bin/env node
// Installs the QEMU vhost-user back-end descriptors (docs/interop/vhost-user.rst, "Backend
// program conventions") with `binary` pointing at this installation's bins, so libvirt and other
// management tools discover the daemons.
// usage: node scripts/install-descriptors.mjs [DIR]   (default /usr/local/share/qemu/vhost-user)
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const dest = process.argv[2] ?? '/usr/local/share/qemu/vhost-user';
const src = join(root, 'share/qemu/vhost-user');
mkdirSync(dest, { recursive: true });
for (const name of readdirSync(src).filter((n) => n.endsWith('.json'))) {
  const d = JSON.parse(readFileSync(join(src, name), 'utf8'));
  const bin = d.binary.split('/').pop();
  d.binary = join(root, 'dist/src/cli', { 'vhost-user-blk': 'blk.js', 'vhost-user-rng': 'rng.js' }[bin] ?? `${bin}.js`);
  writeFileSync(join(dest, name), `${JSON.stringify(d, null, 2)}\n`);
  console.log(`${join(dest, name)} -> ${d.binary}`);
}
