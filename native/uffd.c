/*
 * userfaultfd for postcopy live migration (VHOST_USER_PROTOCOL_F_PAGEFAULT).
 *
 * The back-end only creates the userfaultfd and registers its guest-memory
 * mappings with it; the front-end (QEMU) receives the fd, reads the fault
 * events and wakes the faulting threads once the page arrived. So this part
 * needs the syscall and three ioctls, nothing that reads events.
 */
#include "addon.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static int ioctl_retry(int fd, unsigned long req, void *arg) {
  int r;
  do r = ioctl(fd, req, arg); while (r < 0 && errno == EINTR);
  return r;
}

/* uffdCreate() -> fd: a non-blocking, close-on-exec userfaultfd with the
 * API handshake done (no optional features). Tries the syscall, then
 * /dev/userfaultfd (which works where vm.unprivileged_userfaultfd forbids the
 * syscall for kernel-mode faults but the device node is accessible). */
static napi_value js_uffd_create(napi_env env, napi_callback_info info) {
  int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    int err = errno;
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev < 0) return throw_errno(env, err, "userfaultfd", NULL);
    fd = ioctl_retry(dev, USERFAULTFD_IOC_NEW, (void *)(uintptr_t)(O_CLOEXEC | O_NONBLOCK));
    err = errno;
    close(dev);
    if (fd < 0) return throw_errno(env, err, "ioctl", "USERFAULTFD_IOC_NEW");
  }
  struct uffdio_api api;
  memset(&api, 0, sizeof api);
  api.api = UFFD_API;
  if (ioctl_retry(fd, UFFDIO_API, &api) < 0) {
    int err = errno;
    close(fd);
    return throw_errno(env, err, "ioctl", "UFFDIO_API");
  }
  return ret_i32(env, fd);
}

static bool range_args(napi_env env, napi_value *argv, int *fd, struct uffdio_range *r) {
  uint64_t start, len;
  if (!arg_fd(env, argv[0], fd) ||
      !arg_u64(env, argv[1], &start, "address must be a non-negative integer") ||
      !arg_u64(env, argv[2], &len, "length must be a non-negative integer")) return false;
  r->start = start;
  r->len = len;
  return true;
}

/* uffdRegister(fd, address, length) -> ioctls: registers [address, +length)
 * for missing-page faults; returns the bit mask of ioctls the range supports
 * (as a number: only bits < 53 are defined). */
static napi_value js_uffd_register(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  int fd;
  struct uffdio_register reg;
  memset(&reg, 0, sizeof reg);
  if (!range_args(env, argv, &fd, &reg.range)) return NULL;
  reg.mode = UFFDIO_REGISTER_MODE_MISSING;
  if (ioctl_retry(fd, UFFDIO_REGISTER, &reg) < 0) return throw_errno(env, errno, "ioctl", "UFFDIO_REGISTER");
  return ret_f64(env, (double)(reg.ioctls & ((1ULL << 53) - 1)));
}

/* uffdUnregister(fd, address, length). */
static napi_value js_uffd_unregister(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  int fd;
  struct uffdio_range r;
  if (!range_args(env, argv, &fd, &r)) return NULL;
  if (ioctl_retry(fd, UFFDIO_UNREGISTER, &r) < 0) return throw_errno(env, errno, "ioctl", "UFFDIO_UNREGISTER");
  return ret_undefined(env);
}

void uffd_register_fns(napi_env env, napi_value exports) {
  static const export_fn fns[] = {
    {"uffdCreate", js_uffd_create}, {"uffdRegister", js_uffd_register}, {"uffdUnregister", js_uffd_unregister},
  };
  register_fns(env, exports, fns, sizeof fns / sizeof fns[0]);
}
