/**
 * A tiny QMP client over QEMU's Unix socket (`-qmp unix:PATH,server=on,wait=off`): commands in
 * order, replies matched in order, events kept for {@link QmpClient.waitEvent}.
 */
import { connect, type Socket } from 'node:net';
import { withTimeout } from './events.js';

/** A QMP event as QEMU sends it. */
export interface QmpEvent {
  readonly event: string;
  readonly data?: Record<string, unknown>;
}

/** QMP arguments for `-qmp` on a Unix socket QEMU listens on without waiting for a client. */
export function qmpArgs(path: string): string[] {
  return ['-qmp', `unix:${path},server=on,wait=off`];
}

/** One QMP connection, in command mode after {@link QmpClient.connect}. */
export class QmpClient {
  private buf = '';
  private readonly pending: Array<{ resolve: (v: unknown) => void; reject: (e: Error) => void; cmd: string }> = [];
  private readonly events: QmpEvent[] = [];
  private eventWaiters: Array<() => void> = [];
  private closedErr: Error | null = null;

  private constructor(private readonly sock: Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.onData(d));
    sock.on('close', () => this.fail(new Error('QMP connection closed')));
    sock.on('error', (e) => this.fail(e));
  }

  /** Connects (QEMU listens as soon as it started), reads the greeting, enters command mode. */
  static async connect(path: string, timeoutMs = 10_000): Promise<QmpClient> {
    const sock = connect(path);
    await withTimeout(new Promise<void>((resolve, reject) => {
      sock.once('connect', resolve);
      sock.once('error', reject);
    }), timeoutMs, `QMP connect ${path}`);
    const c = new QmpClient(sock);
    // The greeting arrives first; qmp_capabilities's reply is the first reply after it.
    c.pending.push({ resolve: () => undefined, reject: () => undefined, cmd: 'greeting' });
    await c.execute('qmp_capabilities');
    return c;
  }

  private onData(d: string): void {
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (line === '') continue;
      const msg = JSON.parse(line) as { QMP?: unknown; return?: unknown; error?: { class: string; desc: string }; event?: string; data?: Record<string, unknown> };
      if (msg.event !== undefined) {
        this.events.push({ event: msg.event, data: msg.data });
        for (const w of this.eventWaiters.splice(0)) w();
        continue;
      }
      const p = this.pending.shift();
      if (p === undefined) continue;
      if (msg.error !== undefined) p.reject(new Error(`QMP ${p.cmd}: ${msg.error.class}: ${msg.error.desc}`));
      else p.resolve(msg.return ?? msg.QMP);
    }
  }

  private fail(e: Error): void {
    this.closedErr ??= e;
    for (const p of this.pending.splice(0)) p.reject(new Error(`QMP ${p.cmd}: ${e.message}`));
    for (const w of this.eventWaiters.splice(0)) w();
  }

  /** Runs `cmd` and resolves with its `return` value; rejects with QEMU's error class and text. */
  execute(cmd: string, args?: Record<string, unknown>, timeoutMs = 30_000): Promise<unknown> {
    if (this.closedErr !== null) return Promise.reject(new Error(`QMP ${cmd}: ${this.closedErr.message}`));
    const p = new Promise<unknown>((resolve, reject) => this.pending.push({ resolve, reject, cmd }));
    this.sock.write(`${JSON.stringify(args === undefined ? { execute: cmd } : { execute: cmd, arguments: args })}\n`);
    return withTimeout(p, timeoutMs, `QMP ${cmd}`);
  }

  /** Every event received so far. */
  get received(): readonly QmpEvent[] {
    return this.events;
  }

  /** Resolves with the first event (received before or after the call) that `pred` accepts. */
  waitEvent(pred: (e: QmpEvent) => boolean, timeoutMs: number, what: string): Promise<QmpEvent> {
    const p = new Promise<QmpEvent>((resolve, reject) => {
      const check = (): void => {
        const hit = this.events.find(pred);
        if (hit !== undefined) resolve(hit);
        else if (this.closedErr !== null) reject(new Error(`${what}: ${this.closedErr.message}`));
        else this.eventWaiters.push(check);
      };
      check();
    });
    return withTimeout(p, timeoutMs, what);
  }

  /** Closes the connection. */
  close(): void {
    this.sock.destroy();
  }
}
