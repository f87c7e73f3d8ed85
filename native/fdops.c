/*
 * fd inspection and locking for the daemon CLIs.
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
#include <string.h>
#include <sys/socket.h>

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

void fdops_register(napi_env env, napi_value exports) {
  static const export_fn fns[] = {{"lockFile", js_lock_file}, {"socketInfo", js_socket_info}};
  register_fns(env, exports, fns, sizeof fns / sizeof fns[0]);
}
