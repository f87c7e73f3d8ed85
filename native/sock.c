/*
 * File-descriptor syscalls: AF_UNIX stream sockets with SCM_RIGHTS, eventfd,
 * memfd, ftruncate, ioctl, close/dup and an open-fd counter for leak checks.
 * Every fd created here is O_CLOEXEC; sockets are O_NONBLOCK.
 * fallocate and the block-device range ioctls (BLKDISCARD/BLKZEROOUT) run on
 * the libuv threadpool and return promises: they can take long on real disks.
 */
#include "addon.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define RETRY(expr) ({ long _r; do { _r = (long)(expr); } while (_r == -1 && errno == EINTR); _r; })

/* Fills a sockaddr_un; a path starting with NUL names an abstract socket. */
static bool get_sockaddr(napi_env env, napi_value v, struct sockaddr_un *sa, socklen_t *salen,
                         const char *syscall) {
  size_t len;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) {
    throw_type(env, "path must be a string");
    return false;
  }
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  if (len == 0 || len >= sizeof sa->sun_path) {
    throw_errno(env, len == 0 ? EINVAL : ENAMETOOLONG, syscall, "bad socket path length");
    return false;
  }
  napi_get_value_string_utf8(env, v, sa->sun_path, sizeof sa->sun_path, &len);
  bool abstract = sa->sun_path[0] == '\0';
  *salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (abstract ? 0 : 1));
  return true;
}

static napi_value js_socketpair(napi_env env, napi_callback_info info) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
    return throw_errno(env, errno, "socketpair", NULL);
  napi_value arr;
  napi_create_array_with_length(env, 2, &arr);
  napi_set_element(env, arr, 0, ret_i32(env, sv[0]));
  napi_set_element(env, arr, 1, ret_i32(env, sv[1]));
  return arr;
}

static napi_value js_listen_unix(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  struct sockaddr_un sa;
  socklen_t salen;
  int32_t backlog = 16;
  if (!get_sockaddr(env, argv[0], &sa, &salen, "bind")) return NULL;
  if (!arg_is_undefined(env, argv[1])) {
    int64_t b;
    if (!arg_int(env, argv[1], 0, 65535, &b, "backlog")) return NULL;
    backlog = (int32_t)b;
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, errno, "socket", NULL);
  if (bind(fd, (struct sockaddr *)&sa, salen) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, e, "bind", sa.sun_path[0] ? sa.sun_path : NULL);
  }
  if (listen(fd, backlog) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, e, "listen", NULL);
  }
  return ret_i32(env, fd);
}

/* Non-blocking connect: for AF_UNIX it either completes at once or fails with
 * EAGAIN (listener backlog full), so the event loop is never blocked. */
static napi_value js_connect_unix(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  struct sockaddr_un sa;
  socklen_t salen;
  if (!get_sockaddr(env, argv[0], &sa, &salen, "connect")) return NULL;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, errno, "socket", NULL);
  if (RETRY(connect(fd, (struct sockaddr *)&sa, salen)) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, e, "connect", sa.sun_path[0] ? sa.sun_path : NULL);
  }
  return ret_i32(env, fd);
}

static napi_value js_accept(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int32_t lfd;
  if (!arg_fd(env, argv[0], &lfd)) return NULL;
  int fd = (int)RETRY(accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC));
  if (fd < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return ret_null(env);
    return throw_errno(env, errno, "accept4", NULL);
  }
  return ret_i32(env, fd);
}

typedef union {
  char buf[CMSG_SPACE(sizeof(int) * MAX_FDS_PER_MESSAGE)];
  struct cmsghdr align;
} cmsg_buf;

/* sendmsg(fd, data, fds?) -> bytes | null (EAGAIN). */
static napi_value js_sendmsg(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  int32_t fd;
  void *data;
  size_t len;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  if (!arg_bytes(env, argv[1], &data, &len, "data must be a Uint8Array")) return NULL;
  int fds[MAX_FDS_PER_MESSAGE];
  uint32_t nfds = 0;
  if (!arg_is_undefined(env, argv[2])) {
    bool is_array;
    napi_is_array(env, argv[2], &is_array);
    if (!is_array) return throw_type(env, "fds must be an array");
    napi_get_array_length(env, argv[2], &nfds);
    if (nfds > MAX_FDS_PER_MESSAGE) return throw_errno(env, EINVAL, "sendmsg", "more than 8 fds");
    for (uint32_t i = 0; i < nfds; i++) {
      napi_value e;
      napi_get_element(env, argv[2], i, &e);
      if (!arg_fd(env, e, &fds[i])) return NULL;
    }
  }
  /* A zero-byte stream send carries no ancillary data: the fds would be lost. */
  if (nfds > 0 && len == 0) return throw_errno(env, EINVAL, "sendmsg", "fds need at least one data byte");
  struct iovec iov = {.iov_base = data, .iov_len = len};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  cmsg_buf cbuf;
  if (nfds > 0) {
    memset(&cbuf, 0, sizeof cbuf);
    msg.msg_control = cbuf.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }
  ssize_t n = RETRY(sendmsg(fd, &msg, MSG_NOSIGNAL));
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return ret_null(env);
    return throw_errno(env, errno, "sendmsg", NULL);
  }
  return ret_f64(env, (double)n);
}

/* recvmsg(fd, buf, maxFds, out: Int32Array(1 + 8)) -> bytes | null (EAGAIN).
 * out[0] = number of fds received, out[1..] = the fds. */
static napi_value js_recvmsg(napi_env env, napi_callback_info info) {
  GET_ARGS(4);
  int32_t fd, max_fds;
  void *data, *outp;
  size_t len, outlen;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  if (!arg_bytes(env, argv[1], &data, &len, "buf must be a Uint8Array")) return NULL;
  int64_t mf;
  if (!arg_int(env, argv[2], 0, MAX_FDS_PER_MESSAGE, &mf, "maxFds")) return NULL;
  max_fds = (int32_t)mf;
  if (!arg_bytes(env, argv[3], &outp, &outlen, "out must be an Int32Array")) return NULL;
  if (max_fds < 0 || max_fds > MAX_FDS_PER_MESSAGE)
    return throw_errno(env, EINVAL, "recvmsg", "maxFds must be 0..8");
  if (outlen < sizeof(int32_t) * (1 + MAX_FDS_PER_MESSAGE)) return throw_type(env, "out too small");
  /* A zero-length read would be indistinguishable from EOF. */
  if (len == 0) return throw_errno(env, EINVAL, "recvmsg", "empty buffer");
  int32_t *out = outp;
  struct iovec iov = {.iov_base = data, .iov_len = len};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  cmsg_buf cbuf;
  if (max_fds > 0) {
    msg.msg_control = cbuf.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)max_fds);
  }
  ssize_t n = RETRY(recvmsg(fd, &msg, MSG_CMSG_CLOEXEC));
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return ret_null(env);
    return throw_errno(env, errno, "recvmsg", NULL);
  }
  /* Collect every fd that arrived (CMSG_SPACE rounding can admit more than
   * max_fds), then reject the whole message if anything was cut off. */
  int got[MAX_FDS_PER_MESSAGE * 2];
  int ngot = 0;
  bool overflow = false;
  if (msg.msg_controllen > 0) {
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t cnt = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const unsigned char *p = CMSG_DATA(c);
      for (size_t i = 0; i < cnt; i++) {
        int f;
        memcpy(&f, p + i * sizeof(int), sizeof f);
        if (ngot < (int)(sizeof got / sizeof got[0])) got[ngot++] = f;
        else { close(f); overflow = true; }
      }
    }
  }
  if ((msg.msg_flags & MSG_CTRUNC) || overflow || ngot > max_fds) {
    for (int i = 0; i < ngot; i++) close(got[i]);
    return throw_errno(env, EMSGSIZE, "recvmsg", "MSG_CTRUNC: more fds than maxFds; received fds closed");
  }
  out[0] = ngot;
  for (int i = 0; i < ngot; i++) out[1 + i] = got[i];
  return ret_f64(env, (double)n);
}

/* No EINTR retry: on Linux the fd is released even when close() says EINTR. */
static napi_value js_close(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int32_t fd;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  if (close(fd) < 0 && errno != EINTR) return throw_errno(env, errno, "close", NULL);
  return ret_undefined(env);
}

static napi_value js_dup(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int32_t fd;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  int r = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (r < 0) return throw_errno(env, errno, "fcntl(F_DUPFD_CLOEXEC)", NULL);
  return ret_i32(env, r);
}

static napi_value js_set_nonblocking(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int32_t fd;
  bool on;
  if (!arg_fd(env, argv[0], &fd) || !arg_bool(env, argv[1], &on)) return NULL;
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return throw_errno(env, errno, "fcntl(F_GETFL)", NULL);
  int nfl = on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
  if (nfl != fl && fcntl(fd, F_SETFL, nfl) < 0) return throw_errno(env, errno, "fcntl(F_SETFL)", NULL);
  return ret_undefined(env);
}

static napi_value js_eventfd(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int64_t initval;
  int32_t flags;
  if (!arg_int(env, argv[0], 0, UINT32_MAX, &initval, "initval") ||
      !arg_flags(env, argv[1], EFD_NONBLOCK | EFD_CLOEXEC | EFD_SEMAPHORE, &flags, "eventfd flags"))
    return NULL;
  int fd = eventfd((unsigned)initval, flags);
  if (fd < 0) return throw_errno(env, errno, "eventfd", NULL);
  return ret_i32(env, fd);
}

static napi_value js_eventfd_read(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int32_t fd;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  uint64_t v;
  ssize_t n = RETRY(read(fd, &v, sizeof v));
  if (n < 0) {
    if (errno == EAGAIN) return ret_null(env);
    return throw_errno(env, errno, "read(eventfd)", NULL);
  }
  if (n != sizeof v) return throw_errno(env, EIO, "read(eventfd)", "short read");
  napi_value r;
  napi_create_bigint_uint64(env, v, &r);
  return r;
}

static napi_value js_eventfd_write(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int32_t fd;
  uint64_t v;
  if (!arg_fd(env, argv[0], &fd) ||
      !arg_u64(env, argv[1], &v, "value must be a non-negative integer or bigint"))
    return NULL;
  ssize_t n = RETRY(write(fd, &v, sizeof v));
  if (n < 0) return throw_errno(env, errno, "write(eventfd)", NULL);
  if (n != sizeof v) return throw_errno(env, EIO, "write(eventfd)", "short write");
  return ret_undefined(env);
}

static napi_value js_memfd_create(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  char name[250];
  size_t len;
  int32_t flags;
  if (napi_get_value_string_utf8(env, argv[0], NULL, 0, &len) != napi_ok)
    return throw_type(env, "name must be a string");
  if (len >= sizeof name) return throw_errno(env, EINVAL, "memfd_create", "name too long");
  napi_get_value_string_utf8(env, argv[0], name, sizeof name, &len);
  if (!arg_flags(env, argv[1], MFD_CLOEXEC | MFD_ALLOW_SEALING, &flags, "memfd flags")) return NULL;
  int fd = memfd_create(name, (unsigned)flags);
  if (fd < 0) return throw_errno(env, errno, "memfd_create", NULL);
  return ret_i32(env, fd);
}

static napi_value js_ftruncate(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int32_t fd;
  uint64_t len;
  if (!arg_fd(env, argv[0], &fd) ||
      !arg_u64(env, argv[1], &len, "length must be a non-negative integer"))
    return NULL;
  if (len > (uint64_t)INT64_MAX) {
    napi_throw_range_error(env, NULL, "length overflows off_t");
    return NULL;
  }
  if (RETRY(ftruncate(fd, (off_t)len)) < 0) return throw_errno(env, errno, "ftruncate", NULL);
  return ret_undefined(env);
}

/* ioctl(fd, request, arg): arg is a byte buffer (passed by pointer), an
 * integer (passed by value) or undefined (0). */
static napi_value js_ioctl(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  int32_t fd;
  uint64_t req, val = 0;
  void *ptr = NULL;
  if (!arg_fd(env, argv[0], &fd) ||
      !arg_u64(env, argv[1], &req, "request must be a non-negative integer"))
    return NULL;
  if (req > UINT32_MAX) {
    napi_throw_range_error(env, NULL, "ioctl request must fit in 32 bits");
    return NULL;
  }
  napi_valuetype t;
  napi_typeof(env, argv[2], &t);
  if (t == napi_number || t == napi_bigint) {
    if (!arg_u64(env, argv[2], &val, "arg must be a non-negative integer")) return NULL;
  } else if (t != napi_undefined && t != napi_null) {
    size_t len;
    if (!arg_bytes(env, argv[2], &ptr, &len, "arg must be a Uint8Array, number or bigint")) return NULL;
    /* The kernel copies _IOC_SIZE bytes for requests that encode it; a shorter buffer would be
     * overrun. (Legacy requests such as FIONREAD encode no size: the caller's contract.) */
    if (_IOC_SIZE(req) > len) {
      napi_throw_range_error(env, NULL, "ioctl buffer is shorter than the request's argument size");
      return NULL;
    }
    val = (uint64_t)(uintptr_t)ptr;
  }
  int r = (int)RETRY(ioctl(fd, (unsigned long)req, (unsigned long)val));
  if (r < 0) return throw_errno(env, errno, "ioctl", NULL);
  return ret_i32(env, r);
}

static napi_value js_open_fd_count(napi_env env, napi_callback_info info) {
  DIR *d = opendir("/proc/self/fd");
  if (d == NULL) return throw_errno(env, errno, "opendir", "/proc/self/fd");
  int self = dirfd(d), count = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    if (atoi(e->d_name) == self) continue;
    count++;
  }
  closedir(d);
  return ret_i32(env, count);
}

/* One threadpool job: fallocate(fd, mode, off, len) or ioctl(fd, req, {off, len}). */
typedef struct range_job {
  napi_async_work work;
  napi_deferred deferred;
  int fd;
  bool is_ioctl;
  int mode;
  unsigned long req;
  uint64_t off, len;
  int err;
} range_job;

static void range_execute(napi_env env, void *data) {
  range_job *j = data;
  long r;
  if (j->is_ioctl) {
    uint64_t range[2] = {j->off, j->len};
    r = RETRY(ioctl(j->fd, j->req, range));
  } else {
    r = RETRY(fallocate(j->fd, j->mode, (off_t)j->off, (off_t)j->len));
  }
  j->err = r < 0 ? errno : 0;
}

static void range_complete(napi_env env, napi_status status, void *data) {
  range_job *j = data;
  napi_value result;
  if (status == napi_ok && j->err == 0) {
    napi_get_undefined(env, &result);
    napi_resolve_deferred(env, j->deferred, result);
  } else {
    /* Build the error through the registered factory, then hand it to the promise. */
    int err = status == napi_cancelled ? ECANCELED : j->err;
    throw_errno(env, err, j->is_ioctl ? "ioctl" : "fallocate", NULL);
    if (napi_get_and_clear_last_exception(env, &result) != napi_ok) napi_get_undefined(env, &result);
    napi_reject_deferred(env, j->deferred, result);
  }
  napi_delete_async_work(env, j->work);
  free(j);
}

static napi_value queue_range_job(napi_env env, range_job *j, const char *name) {
  napi_value promise, resource_name;
  if (napi_create_promise(env, &j->deferred, &promise) != napi_ok) {
    free(j);
    return NULL;
  }
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &resource_name);
  if (napi_create_async_work(env, NULL, resource_name, range_execute, range_complete, j, &j->work) != napi_ok ||
      napi_queue_async_work(env, j->work) != napi_ok) {
    /* The promise was created; settle it so the caller is not left hanging. */
    napi_value e;
    throw_errno(env, ENOMEM, name, "cannot queue async work");
    napi_get_and_clear_last_exception(env, &e);
    napi_reject_deferred(env, j->deferred, e);
    if (j->work != NULL) napi_delete_async_work(env, j->work);
    free(j);
  }
  return promise;
}

/* Common argument parsing: (fd, first, offset, length); offset + length must
 * fit in off_t so the kernel sees exactly the range we were given. */
static range_job *range_args(napi_env env, napi_callback_info info, const char *first_what, uint64_t first_mask) {
  GET_ARGS(4);
  int32_t fd;
  uint64_t first, off, len;
  if (!arg_fd(env, argv[0], &fd) ||
      !arg_u64(env, argv[1], &first, first_what) ||
      !arg_u64(env, argv[2], &off, "offset must be a non-negative integer") ||
      !arg_u64(env, argv[3], &len, "length must be a non-negative integer"))
    return NULL;
  if ((first & ~first_mask) != 0) {
    napi_throw_range_error(env, NULL, first_what);
    return NULL;
  }
  if (off > (uint64_t)INT64_MAX || len > (uint64_t)INT64_MAX - off) {
    throw_type(env, "offset + length overflows off_t");
    return NULL;
  }
  range_job *j = calloc(1, sizeof *j);
  if (j == NULL) {
    throw_errno(env, ENOMEM, "calloc", NULL);
    return NULL;
  }
  j->fd = fd;
  j->off = off;
  j->len = len;
  j->req = (unsigned long)first;
  j->mode = (int)first;
  return j;
}

/* fallocateAsync(fd, mode, offset, length) -> Promise<void> */
static napi_value js_fallocate_async(napi_env env, napi_callback_info info) {
  range_job *j = range_args(env, info, "mode must be a combination of known FALLOC_FL_* flags",
                             FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE |
                                 FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE | FALLOC_FL_UNSHARE_RANGE);
  if (j == NULL) return NULL;
  j->is_ioctl = false;
  return queue_range_job(env, j, "fallocate");
}

/* ioctlRangeAsync(fd, request, offset, length) -> Promise<void>: ioctls taking
 * a uint64_t[2] {offset, length} such as BLKDISCARD and BLKZEROOUT. */
static napi_value js_ioctl_range_async(napi_env env, napi_callback_info info) {
  range_job *j = range_args(env, info, "request must be a 32-bit ioctl number", UINT32_MAX);
  if (j == NULL) return NULL;
  j->is_ioctl = true;
  return queue_range_job(env, j, "ioctl");
}

void sock_register(napi_env env, napi_value exports) {
  static const export_fn fns[] = {
      {"socketpair", js_socketpair},   {"listenUnix", js_listen_unix},
      {"connectUnix", js_connect_unix}, {"accept", js_accept},
      {"sendmsg", js_sendmsg},         {"recvmsg", js_recvmsg},
      {"close", js_close},             {"dup", js_dup},
      {"setNonBlocking", js_set_nonblocking}, {"eventfd", js_eventfd},
      {"eventfdRead", js_eventfd_read}, {"eventfdWrite", js_eventfd_write},
      {"memfdCreate", js_memfd_create}, {"ftruncate", js_ftruncate},
      {"ioctl", js_ioctl},             {"openFdCount", js_open_fd_count},
      {"fallocateAsync", js_fallocate_async}, {"ioctlRangeAsync", js_ioctl_range_async},
  };
  register_fns(env, exports, fns, sizeof fns / sizeof fns[0]);
}
