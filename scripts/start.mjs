#!/usr/bin/env node
// `npm start [-- OPTIONS]`: the quick start. Runs the vhost-user-blk daemon straight from this
// checkout (no npx, no package cache) on an embedded RAM disk, listening on
// /tmp/vhost-user-blk.sock (or $VHOST_USER_SOCKET) unless --socket-path or --fd is given. Builds
// dist/ first if missing.
import { existsSync } from 'node:fs';
import { spawnSync, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';

const root = fileURLToPath(new URL('..', import.meta.url));
const cli = join(root, 'dist/src/cli/blk.js');
if (!existsSync(cli)) {
  process.stderr.write('vhost-user: building dist/ (npm run build)...\n');
  const r = spawnSync('npm', ['run', 'build', '--silent'], { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
}
const args = process.argv.slice(2);
const where = args.some((a) => a === '--socket-path' || a === '--fd' || a.startsWith('--socket-path=') || a.startsWith('--fd='));
const argv = where ? args : ['--socket-path', process.env.VHOST_USER_SOCKET || '/tmp/vhost-user-blk.sock', ...args];
const child = spawn(process.execPath, [cli, ...argv], { stdio: 'inherit' });
// The daemon handles SIGINT/SIGTERM itself (it finishes in-flight requests and unlinks its
// socket); forward them so an interrupted `npm start` leaves nothing behind.
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => child.kill(sig));
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 128 : 1)));
