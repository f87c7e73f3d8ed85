/**
 * `vhost-user-blk`: a virtio-blk back-end over a file or block device, or a RAM disk (the entry
 * point is ./blk.js, which loads this module).
 *
 *     vhost-user-blk (--socket-path PATH | --fd N) [--blk-file FILE] [--read-only] [--num-queues N]
 *                    [--aio io_uring|threads] [--inline-io auto|off] [--threads N] [--poll-us N] [--incoming]
 * @module
 */
import { UsageError, intOption, runBackendCli } from './backend-cli.js';
import { FileDisk, RamDisk, VhostUserBlkBackend, type BlockDisk } from '../devices/blk/index.js';

const PROGRAM = 'vhost-user-blk';
const MiB = 1024 * 1024;

/** Runs the daemon; resolves with the process exit status. */
export function main(): Promise<number> {
  return runBackendCli({
    program: PROGRAM,
    type: 'block',
    capabilities: ['read-only', 'blk-file'],
    options: {
      'blk-file': { type: 'string', short: 'b' },
      'read-only': { type: 'boolean', short: 'r' },
      'num-queues': { type: 'string' },
      'queue-size': { type: 'string' },
      'ram-size-mib': { type: 'string' },
      serial: { type: 'string' },
      aio: { type: 'string' },
      'inline-io': { type: 'string' },
      threads: { type: 'string' },
      'poll-us': { type: 'string' },
      incoming: { type: 'boolean' },
    },
    usage:
      '  --blk-file PATH         file or block device to serve (default: a RAM disk)\n' +
      '  --read-only             offer a read-only disk (VIRTIO_BLK_F_RO) and refuse writes\n' +
      '  --num-queues N          request queues (default 1)\n' +
      '  --queue-size N          largest queue size, power of two (default 256)\n' +
      '  --ram-size-mib N        RAM disk size without --blk-file (default 64)\n' +
      '  --serial STR            GET_ID serial (default vhost-user-blk)\n' +
      '  --aio io_uring|threads  how --blk-file I/O is done (default io_uring, threads where unavailable)\n' +
      '  --inline-io auto|off    with io_uring, a request reaching an idle ring is done synchronously when\n' +
      '                          that saves wake-ups: tmpfs/hugetlbfs images, and page-cache hits of\n' +
      '                          reads (RWF_NOWAIT) elsewhere (default auto; off: always the ring)\n' +
      '  --threads N             serve queue q from thread q % N (0: main thread, others: worker threads;\n' +
      '                          needs --blk-file; default 1)\n' +
      '  --poll-us N             adaptive polling: a queue that runs empty (and the io_uring completions)\n' +
      '                          is checked for N µs more before waiting for a kick (CPU for latency,\n' +
      '                          like QEMU\'s poll-max-ns; default 0)\n' +
      '  --incoming              live-migration destination: open --blk-file while the source\'s daemon\n' +
      '                          still holds its lock; take the lock at the first request (the source\n' +
      '                          releases it when its rings stop during the migration)',
    async create(values, logger) {
      const numQueues = intOption(values, 'num-queues', 1, 64) ?? 1;
      const queueSize = intOption(values, 'queue-size', 1, 32768) ?? 256;
      if ((queueSize & (queueSize - 1)) !== 0) throw new UsageError('--queue-size must be a power of two');
      const readOnly = values['read-only'] === true;
      const threads = intOption(values, 'threads', 1, 64) ?? 1;
      const pollUs = intOption(values, 'poll-us', 0, 1_000_000) ?? 0;
      if (threads > numQueues) throw new UsageError(`--threads ${threads} exceeds --num-queues ${numQueues}`);
      const file = values['blk-file'] as string | undefined;
      const aio = (values.aio as string | undefined) ?? 'io_uring';
      if (aio !== 'io_uring' && aio !== 'threads') throw new UsageError(`--aio must be io_uring or threads, not ${aio}`);
      const inlineIo = (values['inline-io'] as string | undefined) ?? 'auto';
      if (inlineIo !== 'auto' && inlineIo !== 'off') throw new UsageError(`--inline-io must be auto or off, not ${inlineIo}`);
      let disk: BlockDisk;
      if (file !== undefined) {
        let fd: FileDisk;
        try {
          fd = FileDisk.open(file, { readOnly, aio, inlineIo, deferLock: values.incoming === true });
        } catch (e) {
          throw new Error(`cannot open --blk-file ${file}: ${(e as Error).message}`);
        }
        if (fd.aioFallbackReason !== null) logger.log('warn', `${PROGRAM}: io_uring unavailable (${fd.aioFallbackReason}); using the threadpool path (aio=threads)`);
        else logger.log('info', `${PROGRAM}: data path aio=${fd.aio}, inline-io=${fd.inlineIo}`);
        disk = fd;
      } else {
        if (threads > 1) throw new UsageError('--threads > 1 needs --blk-file (worker threads share its fd)');
        disk = new RamDisk({ size: (intOption(values, 'ram-size-mib', 1, 1 << 20) ?? 64) * MiB, readOnly });
      }
      const backend = new VhostUserBlkBackend({
        disk, numQueues, queueSize, readOnly, threads, pollUs,
        serial: values.serial as string | undefined,
        logger,
      });
      return {
        backend,
        close: () => disk.close(),
        describe: (socketPath) => {
          const what = file !== undefined ? file : `a ${disk.size / MiB} MiB RAM disk`;
          const sock = socketPath ?? '<the socket passed with --fd>';
          return `${PROGRAM}: serving ${what}${readOnly ? ' read-only' : ''}${values.incoming === true ? ' (incoming migration)' : ''} with ${numQueues} queue(s)${threads > 1 ? ` on ${threads} threads` : ''} on ${sock}\n` +
            'Connect QEMU (guest RAM must be shared):\n' +
            '  qemu-system-x86_64 -m 1G -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \\\n' +
            `    -chardev socket,id=vublk0,path=${sock} -device vhost-user-blk-pci,chardev=vublk0,num-queues=${numQueues} ...`;
        },
      };
    },
  });
}
