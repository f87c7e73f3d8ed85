/**
 * `vhost-user-rng`: a virtio-entropy back-end fed by the OS CSPRNG (the entry point is ./rng.js,
 * which loads this module).
 *
 *     vhost-user-rng (--socket-path PATH | --fd N) [--max-bytes N --period MS]
 * @module
 */
import { intOption, runBackendCli } from './backend-cli.js';
import { VhostUserRngBackend } from '../devices/rng/index.js';

const PROGRAM = 'vhost-user-rng';

/** Runs the daemon; resolves with the process exit status. */
export function main(): Promise<number> {
  return runBackendCli({
    program: PROGRAM,
    type: 'rng',
    capabilities: [],
    options: {
      'max-bytes': { type: 'string' },
      period: { type: 'string' },
    },
    usage:
      '  --max-bytes N           at most N random bytes per period (default: unlimited)\n' +
      '  --period MS             rate-limit period in milliseconds (default 1000)',
    async create(values, logger) {
      const maxBytes = intOption(values, 'max-bytes', 1, 2 ** 40);
      const periodMs = intOption(values, 'period', 1, 3_600_000);
      const backend = new VhostUserRngBackend({ maxBytes, periodMs, logger });
      return {
        backend,
        describe: (socketPath) => {
          const sock = socketPath ?? '<the socket passed with --fd>';
          return `${PROGRAM}: serving virtio-rng${maxBytes !== undefined ? ` limited to ${maxBytes} bytes per ${periodMs ?? 1000} ms` : ''} on ${sock}\n` +
            'Connect QEMU (guest RAM must be shared):\n' +
            '  qemu-system-x86_64 -m 1G -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \\\n' +
            `    -chardev socket,id=vurng0,path=${sock} -device vhost-user-rng-pci,chardev=vurng0 ...`;
        },
      };
    },
  });
}
