/*
 * Netlink sockets for the vdpa management API (generic netlink). Syscalls
 * only: messages are encoded and decoded in TypeScript.
 *
 * Sending runs on the libuv threadpool because the kernel executes a generic
 * netlink command inside sendmsg(): adding a VDUSE device to the vdpa bus
 * probes a driver, which sets the device status and waits for the VDUSE
 * daemon to answer. When that daemon is this very event loop, a synchronous
 * send would deadlock until the kernel's message timeout.
 */
#include "addon.h"

#include <errno.h>
#include <linux/netlink.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif

/* netlinkOpen(protocol) -> fd: a bound AF_NETLINK raw socket (close-on-exec),
 * with extended acks on when the kernel has them (error messages in replies). */
static napi_value js_netlink_open(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int64_t protocol;
  if (!arg_int(env, argv[0], 0, 31, &protocol, "netlink protocol")) return NULL;
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, (int)protocol);
  if (fd < 0) return throw_errno(env, errno, "socket", "AF_NETLINK");
  struct sockaddr_nl sa;
  memset(&sa, 0, sizeof sa);
  sa.nl_family = AF_NETLINK;
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    int err = errno;
    close(fd);
    return throw_errno(env, err, "bind", "AF_NETLINK");
  }
  int one = 1;
  (void)setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one);
  return ret_i32(env, fd);
}

typedef struct send_job {
  napi_async_work work;
  napi_deferred deferred;
  int fd;
  size_t len;
  ssize_t sent;
  int err;
  unsigned char data[];
} send_job;

static void send_execute(napi_env env, void *data) {
  send_job *j = data;
  struct sockaddr_nl sa;
  memset(&sa, 0, sizeof sa);
  sa.nl_family = AF_NETLINK; /* nl_pid 0: the kernel */
  ssize_t r;
  do r = sendto(j->fd, j->data, j->len, 0, (struct sockaddr *)&sa, sizeof sa); while (r < 0 && errno == EINTR);
  j->sent = r;
  j->err = r < 0 ? errno : 0;
}

static void send_complete(napi_env env, napi_status status, void *data) {
  send_job *j = data;
  napi_value result;
  if (status == napi_ok && j->err == 0) {
    napi_create_double(env, (double)j->sent, &result);
    napi_resolve_deferred(env, j->deferred, result);
  } else {
    throw_errno(env, status == napi_cancelled ? ECANCELED : j->err, "sendto", "netlink");
    if (napi_get_and_clear_last_exception(env, &result) != napi_ok) napi_get_undefined(env, &result);
    napi_reject_deferred(env, j->deferred, result);
  }
  napi_delete_async_work(env, j->work);
  free(j);
}

/* netlinkSendAsync(fd, bytes) -> Promise<number>: one message to the kernel,
 * sent from the threadpool (the bytes are copied first). */
static napi_value js_netlink_send_async(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int fd;
  void *data;
  size_t len;
  if (!arg_fd(env, argv[0], &fd) || !arg_bytes(env, argv[1], &data, &len, "netlink message")) return NULL;
  if (len == 0 || len > 65536) {
    napi_throw_range_error(env, NULL, "netlink message must be 1..65536 bytes");
    return NULL;
  }
  send_job *j = calloc(1, sizeof *j + len);
  if (j == NULL) return throw_errno(env, ENOMEM, "calloc", NULL);
  j->fd = fd;
  j->len = len;
  memcpy(j->data, data, len);
  napi_value promise, name;
  if (napi_create_promise(env, &j->deferred, &promise) != napi_ok) {
    free(j);
    return NULL;
  }
  napi_create_string_utf8(env, "netlinkSend", NAPI_AUTO_LENGTH, &name);
  if (napi_create_async_work(env, NULL, name, send_execute, send_complete, j, &j->work) != napi_ok ||
      napi_queue_async_work(env, j->work) != napi_ok) {
    napi_value e;
    throw_errno(env, ENOMEM, "netlinkSend", "cannot queue async work");
    napi_get_and_clear_last_exception(env, &e);
    napi_reject_deferred(env, j->deferred, e);
    if (j->work != NULL) napi_delete_async_work(env, j->work);
    free(j);
  }
  return promise;
}

/* netlinkRecv(fd, buf) -> bytes | null: one datagram without waiting (null
 * when none is queued). A datagram larger than buf fails with EMSGSIZE rather
 * than being silently cut. */
static napi_value js_netlink_recv(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int fd;
  void *data;
  size_t len;
  if (!arg_fd(env, argv[0], &fd) || !arg_bytes(env, argv[1], &data, &len, "receive buffer")) return NULL;
  struct iovec iov = {data, len};
  struct msghdr mh;
  memset(&mh, 0, sizeof mh);
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  ssize_t r;
  do r = recvmsg(fd, &mh, MSG_DONTWAIT); while (r < 0 && errno == EINTR);
  if (r < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return ret_null(env);
    return throw_errno(env, errno, "recvmsg", "netlink");
  }
  if (mh.msg_flags & MSG_TRUNC) return throw_errno(env, EMSGSIZE, "recvmsg", "netlink reply larger than the buffer");
  return ret_f64(env, (double)r);
}

void netlink_register(napi_env env, napi_value exports) {
  static const export_fn fns[] = {
      {"netlinkOpen", js_netlink_open},
      {"netlinkSendAsync", js_netlink_send_async},
      {"netlinkRecv", js_netlink_recv},
  };
  register_fns(env, exports, fns, sizeof fns / sizeof fns[0]);
}
