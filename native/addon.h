/*
 * Shared declarations of the vhost_user_native addon.
 *
 * The addon is a thin syscall layer: no protocol logic lives in C. Every
 * function validates its arguments, retries EINTR, and reports failures by
 * throwing the error object built by the JS factory registered with init()
 * (so the TS layer owns the SysError type).
 */
#ifndef VHOST_USER_NATIVE_ADDON_H
#define VHOST_USER_NATIVE_ADDON_H

#include <node_api.h>
#include <uv.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/* Intrusive doubly linked list; a detached node points to itself so that
 * removing it twice is harmless (needed because env teardown and finalizers
 * race for ownership). */
typedef struct list_node {
  struct list_node *prev, *next;
} list_node;

static inline void list_init(list_node *n) { n->prev = n->next = n; }
static inline void list_insert(list_node *head, list_node *n) {
  n->next = head->next;
  n->prev = head;
  head->next->prev = n;
  head->next = n;
}
static inline void list_remove(list_node *n) {
  n->prev->next = n->next;
  n->next->prev = n->prev;
  list_init(n);
}
static inline bool list_empty(const list_node *head) { return head->next == head; }

/* Per-env (main thread or worker) state, stored as napi instance data. */
typedef struct addon_inst {
  napi_env env;
  napi_ref make_error;      /* JS (errno, syscall, detail) => Error */
  list_node watchers;       /* live fd watchers (uv handles not yet closed) */
  list_node mappings;       /* live mmap regions */
  napi_async_cleanup_hook_handle cleanup_handle;
  int pending_closes;       /* uv_close() calls whose close callback has not run */
  bool tearing_down;
} addon_inst;

#define MAX_FDS_PER_MESSAGE 8

/* Helpers (addon.c). All return NULL so callers can `return throw_...`. */
napi_value throw_errno(napi_env env, int err, const char *syscall, const char *detail);
napi_value throw_type(napi_env env, const char *msg);
addon_inst *get_inst(napi_env env);
bool arg_int(napi_env env, napi_value v, int64_t min, int64_t max, int64_t *out, const char *what);
bool arg_i32(napi_env env, napi_value v, int32_t *out, const char *what);
bool arg_fd(napi_env env, napi_value v, int *out);
bool arg_flags(napi_env env, napi_value v, int32_t known, int32_t *out, const char *what);
bool arg_u64(napi_env env, napi_value v, uint64_t *out, const char *what);
bool arg_bool(napi_env env, napi_value v, bool *out);
bool arg_is_undefined(napi_env env, napi_value v);
bool arg_bytes(napi_env env, napi_value v, void **data, size_t *len, const char *what);
napi_value ret_i32(napi_env env, int32_t v);
napi_value ret_f64(napi_env env, double v);
napi_value ret_null(napi_env env);
napi_value ret_undefined(napi_env env);

#define GET_ARGS(n)                                                          \
  size_t argc = (n);                                                         \
  napi_value argv[(n)];                                                      \
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok)       \
    return NULL;

/* Module parts register their functions on `exports`. */
typedef struct export_fn {
  const char *name;
  napi_callback fn;
} export_fn;

void register_fns(napi_env env, napi_value exports, const export_fn *fns, size_t n);
void sock_register(napi_env env, napi_value exports);
void mem_register(napi_env env, napi_value exports);
void watch_register(napi_env env, napi_value exports);
void fdops_register(napi_env env, napi_value exports);
void netlink_register(napi_env env, napi_value exports);
void uffd_register_fns(napi_env env, napi_value exports);
void guard_register_fns(napi_env env, napi_value exports);
void uring_register(napi_env env, napi_value exports);

/* mem.c: [addr, addr + len) lies inside one live mapping of this env (io_uring checks iovecs). */
bool mem_range_mapped(addon_inst *inst, const void *addr, size_t len);

/* mem.c: iovecs from [host address, length] pairs of doubles (io_uring and hostIo both take guest
 * buffers this way): every pair integral, the address non-zero, the length at most INT_MAX, each
 * range inside one live mapping of this env, the total at most INT_MAX. Fills iov[0, count). */
typedef enum { HOST_IOV_OK, HOST_IOV_MALFORMED, HOST_IOV_UNMAPPED, HOST_IOV_TOO_LONG } host_iov_status;
host_iov_status host_iovecs(addon_inst *inst, const double *pairs, uint32_t count, struct iovec *iov);
/* A refusal of host_iovecs, in words. */
const char *host_iov_reason(host_iov_status s);

/* SIGBUS guard (guard.c): process-wide, async-signal-safe table of mappings
 * whose faults past the end of the file are recovered. guard_register returns
 * a slot index or -errno. */
int guard_install(void);

/* window.cc: an ArrayBuffer over [data, data + length) that V8 does not
 * account as external memory (the mapping is not V8's to free); NULL on
 * failure. Must be called with a handle scope open (any napi callback). */
napi_value window_create(napi_env env, void *data, size_t length);
int guard_register(void *addr, size_t len, size_t page, uint32_t id);
void guard_unregister(int slot);

/* Env teardown hooks of each part. watch_teardown returns the number of
 * handles whose close callback is still pending. */
void mem_teardown(addon_inst *inst);
void watch_teardown(addon_inst *inst);
void teardown_maybe_done(addon_inst *inst);

#endif
