/**
 * The host end of a guest TCP transfer, run inside a test's network namespace (netns.ts):
 *   node tcp-peer.js sink PORT               accept one connection, hash everything until EOF
 *   node tcp-peer.js source HOST PORT BYTES  connect, send BYTES random bytes, half-close
 * Prints `listening` (sink, once bound), then `received|sent bytes=N sha256=HEX ms=T` and exits 0;
 * any error is printed to stderr with exit code 1.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createServer, connect, type Socket } from 'node:net';

const CHUNK = 256 * 1024;

function fail(e: unknown): never {
  process.stderr.write(`tcp-peer: ${String((e as Error).message ?? e)}\n`);
  process.exit(1);
}

function sink(port: number): void {
  const server = createServer((sock: Socket) => {
    server.close();
    const hash = createHash('sha256');
    let bytes = 0;
    const t0 = performance.now();
    sock.on('data', (b: Buffer) => { hash.update(b); bytes += b.length; });
    sock.on('error', fail);
    sock.on('end', () => {
      process.stdout.write(`received bytes=${bytes} sha256=${hash.digest('hex')} ms=${Math.round(performance.now() - t0)}\n`);
      sock.end();
      process.exit(0);
    });
  });
  server.on('error', fail);
  server.listen(port, () => { process.stdout.write('listening\n'); });
}

function source(host: string, port: number, total: number): void {
  const hash = createHash('sha256');
  const t0 = performance.now();
  // Half-open: the guest's nc closes its sending side at once (its stdin is empty).
  const sock = connect({ host, port, allowHalfOpen: true }, () => {
    let sent = 0;
    const pump = (): void => {
      while (sent < total) {
        const b = randomBytes(Math.min(CHUNK, total - sent));
        hash.update(b);
        sent += b.length;
        if (!sock.write(b)) { sock.once('drain', pump); return; }
      }
      // The guest's nc stops reading at EOF; wait for its FIN so every byte was delivered.
      sock.end();
    };
    pump();
  });
  sock.on('data', () => undefined);
  sock.on('error', fail);
  sock.on('close', () => {
    process.stdout.write(`sent bytes=${total} sha256=${hash.digest('hex')} ms=${Math.round(performance.now() - t0)}\n`);
    process.exit(0);
  });
}

const [mode, a, b, c] = process.argv.slice(2);
if (mode === 'sink' && a !== undefined) sink(Number(a));
else if (mode === 'source' && a !== undefined && b !== undefined && c !== undefined) source(a, Number(b), Number(c));
else fail(new Error('usage: tcp-peer sink PORT | source HOST PORT BYTES'));
