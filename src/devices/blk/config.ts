/**
 * virtio-blk wire constants and the device configuration space (VIRTIO 1.2 §5.2,
 * `struct virtio_blk_config` of linux/virtio_blk.h, little-endian, packed).
 * @module
 */
import { VIRTIO_BLK_FEATURES } from '../../virtio/features.js';

function blkBit(name: string): number {
  const v = VIRTIO_BLK_FEATURES[name];
  if (v === undefined) throw new Error(`VIRTIO_BLK_FEATURES lacks ${name}`);
  return v;
}

/** Maximum size of any single segment is in `size_max`. */
export const VIRTIO_BLK_F_SIZE_MAX: number = blkBit('VIRTIO_BLK_F_SIZE_MAX');
/** Maximum number of segments in a request is in `seg_max`. */
export const VIRTIO_BLK_F_SEG_MAX: number = blkBit('VIRTIO_BLK_F_SEG_MAX');
/** Disk-style geometry is in `geometry`. */
export const VIRTIO_BLK_F_GEOMETRY: number = blkBit('VIRTIO_BLK_F_GEOMETRY');
/** The device is read-only. */
export const VIRTIO_BLK_F_RO: number = blkBit('VIRTIO_BLK_F_RO');
/** Block size of the disk is in `blk_size`. */
export const VIRTIO_BLK_F_BLK_SIZE: number = blkBit('VIRTIO_BLK_F_BLK_SIZE');
/** Cache flush command support. */
export const VIRTIO_BLK_F_FLUSH: number = blkBit('VIRTIO_BLK_F_FLUSH');
/** The topology fields are valid. */
export const VIRTIO_BLK_F_TOPOLOGY: number = blkBit('VIRTIO_BLK_F_TOPOLOGY');
/** The cache mode can be read and set through `writeback`. */
export const VIRTIO_BLK_F_CONFIG_WCE: number = blkBit('VIRTIO_BLK_F_CONFIG_WCE');
/** More than one request queue (`num_queues`). */
export const VIRTIO_BLK_F_MQ: number = blkBit('VIRTIO_BLK_F_MQ');
/** VIRTIO_BLK_T_DISCARD support. */
export const VIRTIO_BLK_F_DISCARD: number = blkBit('VIRTIO_BLK_F_DISCARD');
/** VIRTIO_BLK_T_WRITE_ZEROES support. */
export const VIRTIO_BLK_F_WRITE_ZEROES: number = blkBit('VIRTIO_BLK_F_WRITE_ZEROES');

/** Request type: read. */
export const VIRTIO_BLK_T_IN = 0;
/** Request type: write. */
export const VIRTIO_BLK_T_OUT = 1;
/** Request type: cache flush. */
export const VIRTIO_BLK_T_FLUSH = 4;
/** Request type: fetch the device ID string. */
export const VIRTIO_BLK_T_GET_ID = 8;
/** Request type: device lifetime (not offered; answered UNSUPP). */
export const VIRTIO_BLK_T_GET_LIFETIME = 10;
/** Request type: discard ranges. */
export const VIRTIO_BLK_T_DISCARD = 11;
/** Request type: write zeroes to ranges. */
export const VIRTIO_BLK_T_WRITE_ZEROES = 13;
/** Request type: secure erase (not offered; answered UNSUPP). */
export const VIRTIO_BLK_T_SECURE_ERASE = 14;

/** Status: success. */
export const VIRTIO_BLK_S_OK = 0;
/** Status: device or driver error. */
export const VIRTIO_BLK_S_IOERR = 1;
/** Status: request unsupported by the device. */
export const VIRTIO_BLK_S_UNSUPP = 2;

/** Length of the GET_ID device ID string (NUL-padded, no terminator at full length). */
export const VIRTIO_BLK_ID_BYTES = 20;
/** `flags.unmap` of a discard/write-zeroes segment (valid for write zeroes only). */
export const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;
/** The protocol's sector unit (independent of `blk_size`). */
export const VIRTIO_BLK_SECTOR_SIZE = 512;
/** log2 of {@link VIRTIO_BLK_SECTOR_SIZE}. */
export const VIRTIO_BLK_SECTOR_SHIFT = 9;
/** `struct virtio_blk_outhdr`: type u32, reserved (ioprio) u32, sector u64. */
export const VIRTIO_BLK_OUTHDR_SIZE = 16;
/** `struct virtio_blk_discard_write_zeroes`: sector u64, num_sectors u32, flags u32. */
export const VIRTIO_BLK_DWZ_SEGMENT_SIZE = 16;

/** Byte offsets of the `virtio_blk_config` fields (packed; checked against linux/virtio_blk.h). */
export const VIRTIO_BLK_CONFIG_OFFSETS = Object.freeze({
  /** Disk size in 512-byte sectors, le64. */
  capacity: 0,
  /** Largest segment in bytes (VIRTIO_BLK_F_SIZE_MAX), le32. */
  size_max: 8,
  /** Most segments per request (VIRTIO_BLK_F_SEG_MAX), le32. */
  seg_max: 12,
  /** CHS cylinders (VIRTIO_BLK_F_GEOMETRY), le16. */
  geometry_cylinders: 16,
  /** CHS heads, u8. */
  geometry_heads: 18,
  /** CHS sectors per track, u8. */
  geometry_sectors: 19,
  /** Logical block size in bytes (VIRTIO_BLK_F_BLK_SIZE), le32. */
  blk_size: 20,
  /** log2(physical block / logical block) (VIRTIO_BLK_F_TOPOLOGY), u8. */
  physical_block_exp: 24,
  /** Offset of the first aligned logical block, in logical blocks, u8. */
  alignment_offset: 25,
  /** Suggested minimum I/O size in logical blocks, le16. */
  min_io_size: 26,
  /** Optimal I/O size in logical blocks, le32. */
  opt_io_size: 28,
  /** Write cache mode, 1 = writeback (VIRTIO_BLK_F_CONFIG_WCE), u8. */
  writeback: 32,
  /** Padding, u8. */
  unused0: 33,
  /** Number of request queues (VIRTIO_BLK_F_MQ), le16. */
  num_queues: 34,
  /** Largest discard in 512-byte sectors (VIRTIO_BLK_F_DISCARD), le32. */
  max_discard_sectors: 36,
  /** Most segments in one discard request, le32. */
  max_discard_seg: 40,
  /** Discard alignment in 512-byte sectors, le32. */
  discard_sector_alignment: 44,
  /** Largest write-zeroes in 512-byte sectors (VIRTIO_BLK_F_WRITE_ZEROES), le32. */
  max_write_zeroes_sectors: 48,
  /** Most segments in one write-zeroes request, le32. */
  max_write_zeroes_seg: 52,
  /** 1 when write-zeroes may deallocate (unmap), u8. */
  write_zeroes_may_unmap: 56,
  /** Padding, u8[3]. */
  unused1: 57,
  /** Largest secure erase in 512-byte sectors (VIRTIO_BLK_F_SECURE_ERASE), le32. */
  max_secure_erase_sectors: 60,
  /** Most segments in one secure-erase request, le32. */
  max_secure_erase_seg: 64,
  /** Secure-erase alignment in 512-byte sectors, le32. */
  secure_erase_sector_alignment: 68,
  /** Zoned characteristics (VIRTIO_BLK_F_ZONED), 24 bytes. */
  zoned: 72,
} as const);

/**
 * Size of the config space this device exposes: through the zoned characteristics (VIRTIO 1.2),
 * so a front-end asking for the largest layout it knows gets zeroes for the features we do not
 * offer rather than an error. QEMU 7.x asks for 60 bytes; newer versions may ask for up to 96.
 */
export const VIRTIO_BLK_CONFIG_SIZE = 96;

/** Decoded `virtio_blk_config` (the fields this device fills; the rest are zero). */
export interface VirtioBlkConfig {
  /** Capacity in 512-byte sectors. */
  capacity: bigint;
  /** Largest segment in bytes (VIRTIO_BLK_F_SIZE_MAX). */
  sizeMax: number;
  /** Most data segments per request (VIRTIO_BLK_F_SEG_MAX). */
  segMax: number;
  /** Legacy CHS geometry (VIRTIO_BLK_F_GEOMETRY). */
  geometry: {
    /** Cylinders (le16 on the wire). */
    cylinders: number;
    /** Heads (u8). */
    heads: number;
    /** Sectors per track (u8). */
    sectors: number;
  };
  /** Logical block size in bytes (VIRTIO_BLK_F_BLK_SIZE). */
  blkSize: number;
  /** log2(physical block / logical block) (VIRTIO_BLK_F_TOPOLOGY). */
  physicalBlockExp: number;
  /** Offset of the first aligned logical block. */
  alignmentOffset: number;
  /** Minimum efficient I/O size in logical blocks. */
  minIoSize: number;
  /** Optimal sustained I/O size in logical blocks. */
  optIoSize: number;
  /** 1 = writeback cache, 0 = writethrough (VIRTIO_BLK_F_CONFIG_WCE). */
  writeback: number;
  /** Number of request queues (VIRTIO_BLK_F_MQ). */
  numQueues: number;
  /** Most sectors per discard segment. */
  maxDiscardSectors: number;
  /** Most segments per discard request. */
  maxDiscardSeg: number;
  /** Discard alignment in sectors. */
  discardSectorAlignment: number;
  /** Most sectors per write-zeroes segment. */
  maxWriteZeroesSectors: number;
  /** Most segments per write-zeroes request. */
  maxWriteZeroesSeg: number;
  /** 1 if write zeroes with `unmap` may deallocate. */
  writeZeroesMayUnmap: number;
}

const O = VIRTIO_BLK_CONFIG_OFFSETS;

/** Encodes `cfg` into `out` (default: a fresh {@link VIRTIO_BLK_CONFIG_SIZE}-byte buffer, zeroed padding). */
export function encodeBlkConfig(cfg: VirtioBlkConfig, out: Uint8Array = new Uint8Array(VIRTIO_BLK_CONFIG_SIZE)): Uint8Array {
  if (out.length < VIRTIO_BLK_CONFIG_SIZE) throw new RangeError(`config buffer needs ${VIRTIO_BLK_CONFIG_SIZE} bytes`);
  out.fill(0, 0, VIRTIO_BLK_CONFIG_SIZE);
  const dv = new DataView(out.buffer, out.byteOffset, VIRTIO_BLK_CONFIG_SIZE);
  dv.setBigUint64(O.capacity, cfg.capacity, true);
  dv.setUint32(O.size_max, cfg.sizeMax, true);
  dv.setUint32(O.seg_max, cfg.segMax, true);
  dv.setUint16(O.geometry_cylinders, cfg.geometry.cylinders, true);
  dv.setUint8(O.geometry_heads, cfg.geometry.heads);
  dv.setUint8(O.geometry_sectors, cfg.geometry.sectors);
  dv.setUint32(O.blk_size, cfg.blkSize, true);
  dv.setUint8(O.physical_block_exp, cfg.physicalBlockExp);
  dv.setUint8(O.alignment_offset, cfg.alignmentOffset);
  dv.setUint16(O.min_io_size, cfg.minIoSize, true);
  dv.setUint32(O.opt_io_size, cfg.optIoSize, true);
  dv.setUint8(O.writeback, cfg.writeback);
  dv.setUint16(O.num_queues, cfg.numQueues, true);
  dv.setUint32(O.max_discard_sectors, cfg.maxDiscardSectors, true);
  dv.setUint32(O.max_discard_seg, cfg.maxDiscardSeg, true);
  dv.setUint32(O.discard_sector_alignment, cfg.discardSectorAlignment, true);
  dv.setUint32(O.max_write_zeroes_sectors, cfg.maxWriteZeroesSectors, true);
  dv.setUint32(O.max_write_zeroes_seg, cfg.maxWriteZeroesSeg, true);
  dv.setUint8(O.write_zeroes_may_unmap, cfg.writeZeroesMayUnmap);
  return out;
}

/** Decodes a config space read of at least 57 bytes (through write_zeroes_may_unmap; front-end side, tests). */
export function decodeBlkConfig(bytes: Uint8Array): VirtioBlkConfig {
  if (bytes.length <= O.write_zeroes_may_unmap) throw new RangeError(`config space too short: ${bytes.length} bytes`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  return {
    capacity: dv.getBigUint64(O.capacity, true),
    sizeMax: dv.getUint32(O.size_max, true),
    segMax: dv.getUint32(O.seg_max, true),
    geometry: { cylinders: dv.getUint16(O.geometry_cylinders, true), heads: dv.getUint8(O.geometry_heads), sectors: dv.getUint8(O.geometry_sectors) },
    blkSize: dv.getUint32(O.blk_size, true),
    physicalBlockExp: dv.getUint8(O.physical_block_exp),
    alignmentOffset: dv.getUint8(O.alignment_offset),
    minIoSize: dv.getUint16(O.min_io_size, true),
    optIoSize: dv.getUint32(O.opt_io_size, true),
    writeback: dv.getUint8(O.writeback),
    numQueues: dv.getUint16(O.num_queues, true),
    maxDiscardSectors: dv.getUint32(O.max_discard_sectors, true),
    maxDiscardSeg: dv.getUint32(O.max_discard_seg, true),
    discardSectorAlignment: dv.getUint32(O.discard_sector_alignment, true),
    maxWriteZeroesSectors: dv.getUint32(O.max_write_zeroes_sectors, true),
    maxWriteZeroesSeg: dv.getUint32(O.max_write_zeroes_seg, true),
    writeZeroesMayUnmap: dv.getUint8(O.write_zeroes_may_unmap),
  };
}

/**
 * The 20-byte GET_ID string for `serial`: ASCII, truncated to 20 bytes, NUL-padded. Non-ASCII
 * characters are replaced with '?' so the guest sees exactly what the logs show.
 */
export function encodeBlkSerial(serial: string): Uint8Array {
  const out = new Uint8Array(VIRTIO_BLK_ID_BYTES);
  const n = Math.min(serial.length, VIRTIO_BLK_ID_BYTES);
  for (let i = 0; i < n; i++) {
    const c = serial.charCodeAt(i);
    out[i] = c >= 0x20 && c < 0x7f ? c : 0x3f;
  }
  return out;
}

/** Human name of a request type for logs. */
export function blkRequestTypeName(type: number): string {
  switch (type) {
    case VIRTIO_BLK_T_IN: return 'IN';
    case VIRTIO_BLK_T_OUT: return 'OUT';
    case VIRTIO_BLK_T_FLUSH: return 'FLUSH';
    case VIRTIO_BLK_T_GET_ID: return 'GET_ID';
    case VIRTIO_BLK_T_GET_LIFETIME: return 'GET_LIFETIME';
    case VIRTIO_BLK_T_DISCARD: return 'DISCARD';
    case VIRTIO_BLK_T_WRITE_ZEROES: return 'WRITE_ZEROES';
    case VIRTIO_BLK_T_SECURE_ERASE: return 'SECURE_ERASE';
    default: return `type ${type >>> 0}`;
  }
}
