// Real AF_UNIX sockets, SCM_RIGHTS fd passing, truncation handling and errno mapping of src/sys.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as sys from '../../src/sys/index.js';

const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
const FIONREAD = 0x541b;

/** open-file flags of fd as the kernel reports them. */
function fdFlags(fd: number): number {
  const m = /^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  assert.ok(m?.[1] !== undefined, 'fdinfo has flags');
  return parseInt(m[1], 8);
}

function withTmpDir(fn: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), 'vhu-sys-'));
  try {
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function closeAll(fds: readonly number[]): void {
  for (const fd of fds) sys.close(fd);
}

test('socketpair: nonblocking cloexec stream, data both ways, EAGAIN as null', () => {
  const [a, b] = sys.socketpair();
  try {
    for (const fd of [a, b]) {
      assert.equal(fdFlags(fd) & O_NONBLOCK, O_NONBLOCK);
      assert.equal(fdFlags(fd) & O_CLOEXEC, O_CLOEXEC);
    }
    const buf = new Uint8Array(16);
    assert.equal(sys.recvmsg(a, buf), null, 'nothing pending -> null');
    assert.equal(sys.sendmsg(a, Uint8Array.of(1, 2, 3)), 3);
    // a subarray view: the addon must honour byteOffset
    const big = new Uint8Array(32);
    const r = sys.recvmsg(b, big.subarray(10, 20));
    assert.deepEqual(r, { bytes: 3, fds: [] });
    assert.deepEqual([...big.subarray(10, 13)], [1, 2, 3]);
    assert.equal(big[9], 0);
    assert.equal(sys.sendmsg(b, Buffer.from('pong')), 4);
    assert.equal(sys.recvmsg(a, buf)?.bytes, 4);
    assert.equal(Buffer.from(buf.subarray(0, 4)).toString(), 'pong');
  } finally {
    closeAll([a, b]);
  }
});

test('sendmsg returns null when the socket buffer is full (EAGAIN), partial writes are counted', () => {
  const [a, b] = sys.socketpair();
  try {
    const chunk = new Uint8Array(65536);
    let total = 0;
    let n: number | null;
    while ((n = sys.sendmsg(a, chunk)) !== null) {
      assert.ok(n > 0 && n <= chunk.length);
      total += n;
      assert.ok(total < 64 * 1024 * 1024, 'socket buffer never filled');
    }
    // drain and check every byte written arrived
    let got = 0;
    let r;
    const rbuf = new Uint8Array(65536);
    while ((r = sys.recvmsg(b, rbuf)) !== null) got += r.bytes;
    assert.equal(got, total);
  } finally {
    closeAll([a, b]);
  }
});

test('EOF is {bytes: 0, fds: []}; writing to a closed peer is EPIPE without SIGPIPE', () => {
  const [a, b] = sys.socketpair();
  sys.close(b);
  try {
    assert.deepEqual(sys.recvmsg(a, new Uint8Array(8)), { bytes: 0, fds: [] });
    assert.throws(() => sys.sendmsg(a, Uint8Array.of(1)), (e: unknown) => e instanceof sys.SysError && e.code === 'EPIPE' && e.syscall === 'sendmsg');
  } finally {
    sys.close(a);
  }
});

test('listen/connect/accept and memfd passing: writes through one mapping are visible through the other', () => {
  withTmpDir((dir) => {
    const path = join(dir, 'sock');
    const lfd = sys.listenUnix(path);
    const fds: number[] = [lfd];
    try {
      assert.equal(sys.accept(lfd), null, 'no pending connection -> null');
      const cfd = sys.connectUnix(path);
      fds.push(cfd);
      const sfd = sys.accept(lfd);
      assert.ok(sfd !== null);
      fds.push(sfd);
      assert.equal(fdFlags(sfd) & (O_NONBLOCK | O_CLOEXEC), O_NONBLOCK | O_CLOEXEC);

      const mfd = sys.memfdCreate('vhu-test');
      fds.push(mfd);
      sys.ftruncate(mfd, 8192);
      assert.equal(sys.sendmsg(cfd, Uint8Array.of(0xaa), [mfd]), 1);
      const buf = new Uint8Array(4);
      const r = sys.recvmsg(sfd, buf);
      assert.ok(r !== null);
      assert.equal(r.bytes, 1);
      assert.equal(r.fds.length, 1);
      const rfd = r.fds[0] ?? -1;
      fds.push(rfd);
      assert.notEqual(rfd, mfd);
      assert.equal(fdFlags(rfd) & O_CLOEXEC, O_CLOEXEC, 'received fd is close-on-exec (MSG_CMSG_CLOEXEC)');

      const m1 = sys.mmap(mfd, 0, 8192);
      const m2 = sys.mmap(rfd, 4096, 4096);
      try {
        const w1 = new Uint8Array(m1.windows[0] ?? new ArrayBuffer(0));
        const w2 = new Uint8Array(m2.windows[0] ?? new ArrayBuffer(0));
        w1.set(Buffer.from('hello'), 4096 + 7);
        assert.equal(Buffer.from(w2.subarray(7, 12)).toString(), 'hello');
        w2[100] = 42;
        assert.equal(w1[4096 + 100], 42);
      } finally {
        m1.unmap();
        m2.unmap();
      }
    } finally {
      closeAll(fds);
    }
  });
});

test('connect/bind errors carry errno names: ENOENT, ECONNREFUSED, EADDRINUSE', () => {
  withTmpDir((dir) => {
    const path = join(dir, 'sock');
    assert.throws(() => sys.connectUnix(path), (e: unknown) => e instanceof sys.SysError && e.code === 'ENOENT' && e.syscall === 'connect');
    const lfd = sys.listenUnix(path);
    try {
      assert.throws(() => sys.listenUnix(path), (e: unknown) => e instanceof sys.SysError && e.code === 'EADDRINUSE' && e.syscall === 'bind');
    } finally {
      sys.close(lfd);
    }
    // the socket file remains but nobody listens
    assert.throws(() => sys.connectUnix(path), (e: unknown) => e instanceof sys.SysError && e.code === 'ECONNREFUSED');
    assert.throws(() => sys.listenUnix('x'.repeat(200)), (e: unknown) => e instanceof sys.SysError && e.code === 'ENAMETOOLONG');
  });
});

test('8 fds in one message arrive in order; 9 fds are rejected', () => {
  const [a, b] = sys.socketpair();
  const sent = Array.from({ length: 8 }, (_, i) => sys.eventfd(i + 1));
  const received: number[] = [];
  try {
    assert.throws(() => sys.sendmsg(a, Uint8Array.of(1), [...sent, sent[0] ?? -1]), (e: unknown) => e instanceof sys.SysError && e.code === 'EINVAL');
    assert.throws(() => sys.sendmsg(a, new Uint8Array(0), sent), (e: unknown) => e instanceof sys.SysError && e.code === 'EINVAL');
    assert.equal(sys.sendmsg(a, Uint8Array.of(9, 9), sent), 2);
    const r = sys.recvmsg(b, new Uint8Array(8), 8);
    assert.ok(r !== null);
    received.push(...r.fds);
    assert.equal(r.bytes, 2);
    assert.equal(r.fds.length, 8);
    // each received fd is the same eventfd: its counter identifies it
    r.fds.forEach((fd, i) => assert.equal(sys.eventfdRead(fd), BigInt(i + 1)));
  } finally {
    closeAll([a, b, ...sent, ...received]);
  }
});

for (const [sentCount, maxFds] of [[8, 2], [2, 1], [1, 0]] as const) {
  test(`MSG_CTRUNC (${sentCount} fds sent, maxFds ${maxFds}) throws EMSGSIZE and leaks no fd`, () => {
    const [a, b] = sys.socketpair();
    const sent = Array.from({ length: sentCount }, () => sys.eventfd());
    try {
      assert.equal(sys.sendmsg(a, Uint8Array.of(7), sent), 1);
      const before = sys.openFdCount();
      assert.throws(
        () => sys.recvmsg(b, new Uint8Array(8), maxFds),
        (e: unknown) => e instanceof sys.SysError && e.code === 'EMSGSIZE' && e.syscall === 'recvmsg' && /MSG_CTRUNC/.test(e.message),
      );
      assert.equal(sys.openFdCount(), before, 'every fd that arrived was closed');
    } finally {
      closeAll([a, b, ...sent]);
    }
  });
}

test('ioctl FIONREAD reports pending bytes through a 4-byte buffer', () => {
  const [a, b] = sys.socketpair();
  try {
    sys.sendmsg(a, new Uint8Array(123));
    const out = new Uint8Array(4);
    assert.equal(sys.ioctl(b, FIONREAD, out), 0);
    assert.equal(new DataView(out.buffer).getInt32(0, true), 123);
    assert.equal(sys.ioctl(b, BigInt(FIONREAD), out), 0);
    assert.throws(() => sys.ioctl(b, 0x5401 /* TCGETS */, out), (e: unknown) => e instanceof sys.SysError && e.code === 'ENOTTY' && e.syscall === 'ioctl');
  } finally {
    closeAll([a, b]);
  }
});

test('SysError on a bad fd: EBADF with errno and syscall', () => {
  const [a, b] = sys.socketpair();
  closeAll([a, b]);
  const check = (syscall: string) => (e: unknown): boolean => {
    assert.ok(e instanceof sys.SysError);
    assert.ok(e instanceof Error);
    assert.equal(e.code, 'EBADF');
    assert.equal(e.errno, 9);
    assert.equal(e.syscall, syscall);
    assert.match(e.message, new RegExp(syscall.replace(/[()]/g, '.')));
    return true;
  };
  assert.throws(() => sys.recvmsg(a, new Uint8Array(4)), check('recvmsg'));
  assert.throws(() => sys.sendmsg(a, new Uint8Array(4)), check('sendmsg'));
  assert.throws(() => sys.close(a), check('close'));
  assert.throws(() => sys.dup(a), check('fcntl(F_DUPFD_CLOEXEC)'));
  assert.throws(() => sys.eventfdRead(a), check('read(eventfd)'));
  assert.throws(() => sys.ioctl(a, FIONREAD, new Uint8Array(4)), check('ioctl'));
});

test('dup and setNonBlocking', () => {
  const [a, b] = sys.socketpair();
  const d = sys.dup(a);
  try {
    assert.equal(fdFlags(d) & O_CLOEXEC, O_CLOEXEC);
    sys.sendmsg(d, Uint8Array.of(5));
    assert.deepEqual(sys.recvmsg(b, new Uint8Array(1)), { bytes: 1, fds: [] });
    sys.setNonBlocking(b, false);
    assert.equal(fdFlags(b) & O_NONBLOCK, 0);
    sys.setNonBlocking(b, true);
    assert.equal(fdFlags(b) & O_NONBLOCK, O_NONBLOCK);
  } finally {
    closeAll([a, b, d]);
  }
});
