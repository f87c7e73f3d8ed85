/*
 * fd inspection and locking for the daemon CLIs, and synchronous vectored
 * I/O by host address (the disk layer's inline path beside io_uring).
 *
 * Open-file-description locks (fcntl F_OFD_SETLK) on whole files: the same
 * lock family QEMU uses for image locking, so a disk image held by one of our
 * daemons is also refused to QEMU and qemu-storage-daemon, and vice versa.
 * OFD locks belong to the open file, not the process, so they survive fork
 * and are released when the last fd of that open file closes.
 */
#include "addon.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/statfs.h>

/* lockFile(fd, exclusive): takes a whole-file write (exclusive) or read
 * (shared) lock without waiting; throws EAGAIN when another holder conflicts. */
static napi_value js_lock_file(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int fd;
  bool exclusive;
  if (!arg_fd(env, argv[0], &fd) || !arg_bool(env, argv[1], &exclusive)) return NULL;
  struct flock fl;
  memset(&fl, 0, sizeof fl);
  fl.l_type = exclusive ? F_WRLCK : F_RDLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = 0;
  fl.l_len = 0; /* to the end of the file, however large it grows */
  int r;
  do r = fcntl(fd, F_OFD_SETLK, &fl); while (r < 0 && errno == EINTR);
  /* POSIX allows EACCES for a conflicting lock; report one code for "held". */
  if (r < 0) return throw_errno(env, errno == EACCES ? EAGAIN : errno, "fcntl", "F_OFD_SETLK");
  return ret_undefined(env);
}

/* socketInfo(fd) -> { domain, type, listening }: what an inherited fd is
 * (QEMU/libvirt pass a listening socket or one end of a socketpair). Throws
 * ENOTSOCK for anything that is not a socket. */
static napi_value js_socket_info(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int fd;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  int domain = 0, type = 0, listening = 0;
  socklen_t len = sizeof domain;
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0) return throw_errno(env, errno, "getsockopt", "SO_DOMAIN");
  len = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0) return throw_errno(env, errno, "getsockopt", "SO_TYPE");
  len = sizeof listening;
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0) return throw_errno(env, errno, "getsockopt", "SO_ACCEPTCONN");
  napi_value obj, v;
  napi_create_object(env, &obj);
  napi_create_int32(env, domain, &v);
  napi_set_named_property(env, obj, "domain", v);
  napi_create_int32(env, type, &v);
  napi_set_named_property(env, obj, "type", v);
  napi_get_boolean(env, listening != 0, &v);
  napi_set_named_property(env, obj, "listening", v);
  return obj;
}

/* fsType(fd) -> f_type of the file system holding fd (fstatfs), as a double:
 * the disk layer asks whether an image lives in memory (tmpfs, hugetlbfs). */
static napi_value js_fs_type(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int fd;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  struct statfs st;
  int r;
  do r = fstatfs(fd, &st); while (r < 0 && errno == EINTR);
  if (r < 0) return throw_errno(env, errno, "fstatfs", NULL);
  return ret_f64(env, (double)(unsigned long)st.f_type);
}

#define HOST_IO_MAX_IOVS 64

/* hostIo(fd, write, pairs, count, offset, flags) -> bytes, or -errno.
 * One synchronous preadv2 / pwritev2 straight into (out of) guest memory
 * given as `count` [host address, length] pairs of a Float64Array. Each range
 * must lie inside a live mapping of this env (as for io_uring): an address
 * the TS layer failed to validate never reaches the kernel. I/O errors are
 * returned, not thrown, because the caller falls back to the ring on any of
 * them (EAGAIN from RWF_NOWAIT above all) and throwing costs more than the
 * syscall; malformed arguments throw. */
static napi_value js_host_io(napi_env env, napi_callback_info info) {
  GET_ARGS(6);
  int fd;
  bool write;
  int64_t count, flags;
  uint64_t offset;
  if (!arg_fd(env, argv[0], &fd) || !arg_bool(env, argv[1], &write)) return NULL;
  bool is_ta = false;
  napi_typedarray_type tt;
  size_t n;
  void *data;
  if (napi_is_typedarray(env, argv[2], &is_ta) != napi_ok || !is_ta ||
      napi_get_typedarray_info(env, argv[2], &tt, &n, &data, NULL, NULL) != napi_ok || tt != napi_float64_array)
    return throw_type(env, "pairs must be a Float64Array");
  if (!arg_int(env, argv[3], 1, HOST_IO_MAX_IOVS, &count, "count")) return NULL;
  if ((size_t)count * 2 > n) return throw_type(env, "count exceeds the pairs array");
  if (!arg_u64(env, argv[4], &offset, "offset")) return NULL;
  if (offset > (uint64_t)LLONG_MAX) return throw_type(env, "offset out of range");
  if (!arg_int(env, argv[5], 0, RWF_NOWAIT | RWF_DSYNC, &flags, "flags")) return NULL;
  if ((flags & ~(int64_t)(RWF_NOWAIT | RWF_DSYNC)) != 0) return throw_type(env, "flags may only be RWF_NOWAIT | RWF_DSYNC");
  addon_inst *inst = get_inst(env);
  if (inst == NULL) return throw_errno(env, EFAULT, write ? "pwritev2" : "preadv2", "no live mappings");
  struct iovec iov[HOST_IO_MAX_IOVS];
  host_iov_status st = host_iovecs(inst, data, (uint32_t)count, iov);
  if (st == HOST_IOV_UNMAPPED) return throw_errno(env, EFAULT, write ? "pwritev2" : "preadv2", host_iov_reason(st));
  if (st != HOST_IOV_OK) return throw_type(env, host_iov_reason(st));
  ssize_t r;
  do {
    r = write ? pwritev2(fd, iov, (int)count, (off_t)offset, (int)flags) : preadv2(fd, iov, (int)count, (off_t)offset, (int)flags);
  } while (r < 0 && errno == EINTR);
  return ret_f64(env, r < 0 ? -(double)errno : (double)r);
}

void fdops_register(napi_env env, napi_value exports) {
  static const export_fn fns[] = {{"lockFile", js_lock_file}, {"socketInfo", js_socket_info}, {"fsType", js_fs_type}, {"hostIo", js_host_io}};
  register_fns(env, exports, fns, sizeof fns / sizeof fns[0]);
}
