/*
 * vhost_user_native: entry point, argument helpers, error plumbing, constants
 * and env lifecycle. See addon.h for the design notes.
 */
#include "addon.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <limits.h>

addon_inst *get_inst(napi_env env) {
  void *data = NULL;
  napi_get_instance_data(env, &data);
  return (addon_inst *)data;
}

napi_value throw_type(napi_env env, const char *msg) {
  napi_throw_type_error(env, NULL, msg);
  return NULL;
}

/* Builds the error through the JS factory so the TS layer owns the class; falls
 * back to a plain Error with code/errno/syscall if init() was never called. */
napi_value throw_errno(napi_env env, int err, const char *syscall, const char *detail) {
  addon_inst *inst = get_inst(env);
  napi_value argv[3], fn, global, error = NULL;
  napi_create_int32(env, err, &argv[0]);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &argv[1]);
  if (detail != NULL)
    napi_create_string_utf8(env, detail, NAPI_AUTO_LENGTH, &argv[2]);
  else
    napi_get_undefined(env, &argv[2]);
  if (inst != NULL && inst->make_error != NULL &&
      napi_get_reference_value(env, inst->make_error, &fn) == napi_ok && fn != NULL) {
    napi_get_global(env, &global);
    if (napi_call_function(env, global, fn, 3, argv, &error) != napi_ok)
      return NULL; /* the factory threw; that exception stays pending */
  } else {
    char msg[160];
    snprintf(msg, sizeof msg, "%s failed: %s", syscall, strerror(err));
    napi_value m;
    napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
    napi_create_error(env, NULL, m, &error);
    napi_set_named_property(env, error, "errno", argv[0]);
    napi_set_named_property(env, error, "syscall", argv[1]);
  }
  napi_throw(env, error);
  return NULL;
}

/* A JS number that is an integer in [min, max]: TypeError for anything that
 * is not an integral Number (NaN, 1.5, "3", a BigInt), RangeError when out of
 * range. napi_get_value_int32 alone would silently wrap 2**32+1 to 1 and turn
 * NaN into 0, so the double is checked before any conversion. */
bool arg_int(napi_env env, napi_value v, int64_t min, int64_t max, int64_t *out, const char *what) {
  napi_valuetype t;
  double d;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number ||
      napi_get_value_double(env, v, &d) != napi_ok || d != d || d != (double)(int64_t)d ||
      d < -9007199254740991.0 || d > 9007199254740991.0) {
    char msg[160];
    snprintf(msg, sizeof msg, "%s must be an integer", what);
    throw_type(env, msg);
    return false;
  }
  if (d < (double)min || d > (double)max) {
    char msg[160];
    snprintf(msg, sizeof msg, "%s must be in [%lld, %lld]", what, (long long)min, (long long)max);
    napi_throw_range_error(env, NULL, msg);
    return false;
  }
  *out = (int64_t)d;
  return true;
}

bool arg_i32(napi_env env, napi_value v, int32_t *out, const char *what) {
  int64_t x;
  if (!arg_int(env, v, INT32_MIN, INT32_MAX, &x, what)) return false;
  *out = (int32_t)x;
  return true;
}

/* A file descriptor: an integer in [0, INT_MAX]. */
bool arg_fd(napi_env env, napi_value v, int *out) {
  int64_t x;
  if (!arg_int(env, v, 0, INT32_MAX, &x, "fd")) return false;
  *out = (int)x;
  return true;
}

/* Flags: an integer in [0, INT32_MAX] with no bit outside `known`. */
bool arg_flags(napi_env env, napi_value v, int32_t known, int32_t *out, const char *what) {
  int64_t x;
  if (!arg_int(env, v, 0, INT32_MAX, &x, what)) return false;
  if ((x & ~(int64_t)known) != 0) {
    char msg[160];
    snprintf(msg, sizeof msg, "%s has unknown bits 0x%llx", what, (unsigned long long)(x & ~(int64_t)known));
    napi_throw_range_error(env, NULL, msg);
    return false;
  }
  *out = (int32_t)x;
  return true;
}

/* Accepts a non-negative safe integer Number or a BigInt below 2^64:
 * TypeError for other types or non-integers, RangeError for negatives or
 * values that do not fit. */
bool arg_u64(napi_env env, napi_value v, uint64_t *out, const char *what) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t == napi_bigint) {
    int sign = 0;
    size_t words = 1;
    uint64_t w = 0;
    napi_get_value_bigint_words(env, v, &sign, &words, &w);
    if (sign != 0 || words > 1) {
      napi_throw_range_error(env, NULL, what);
      return false;
    }
    *out = w;
    return true;
  }
  if (t == napi_number) {
    double d;
    napi_get_value_double(env, v, &d);
    if (d == d && d == (double)(int64_t)d && d >= -9007199254740991.0 && d <= 9007199254740991.0) {
      if (d < 0) {
        napi_throw_range_error(env, NULL, what);
        return false;
      }
      *out = (uint64_t)d;
      return true;
    }
  }
  throw_type(env, what);
  return false;
}

bool arg_bool(napi_env env, napi_value v, bool *out) {
  if (napi_get_value_bool(env, v, out) != napi_ok) {
    throw_type(env, "expected a boolean");
    return false;
  }
  return true;
}

bool arg_is_undefined(napi_env env, napi_value v) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  return t == napi_undefined || t == napi_null;
}

/* Any TypedArray or DataView; data already includes the view's byteOffset. */
bool arg_bytes(napi_env env, napi_value v, void **data, size_t *len, const char *what) {
  bool is;
  napi_is_typedarray(env, v, &is);
  if (is) {
    napi_typedarray_type type;
    size_t length;
    napi_get_typedarray_info(env, v, &type, &length, data, NULL, NULL);
    size_t elem = 1;
    switch (type) {
      case napi_int16_array: case napi_uint16_array: elem = 2; break;
      case napi_int32_array: case napi_uint32_array: case napi_float32_array: elem = 4; break;
      case napi_float64_array: case napi_bigint64_array: case napi_biguint64_array: elem = 8; break;
      default: break;
    }
    *len = length * elem;
    if (*data == NULL && *len != 0) { /* detached */
      throw_type(env, "buffer is detached");
      return false;
    }
    return true;
  }
  napi_is_dataview(env, v, &is);
  if (is) {
    napi_get_dataview_info(env, v, len, data, NULL, NULL);
    return true;
  }
  throw_type(env, what);
  return false;
}

napi_value ret_i32(napi_env env, int32_t v) {
  napi_value r;
  napi_create_int32(env, v, &r);
  return r;
}
napi_value ret_f64(napi_env env, double v) {
  napi_value r;
  napi_create_double(env, v, &r);
  return r;
}
napi_value ret_null(napi_env env) {
  napi_value r;
  napi_get_null(env, &r);
  return r;
}
napi_value ret_undefined(napi_env env) {
  napi_value r;
  napi_get_undefined(env, &r);
  return r;
}

void register_fns(napi_env env, napi_value exports, const export_fn *fns, size_t n) {
  for (size_t i = 0; i < n; i++) {
    napi_value f;
    napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &f);
    napi_set_named_property(env, exports, fns[i].name, f);
  }
}

/* init(makeError): registers the factory used by throw_errno. */
static napi_value js_init(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  napi_valuetype t;
  napi_typeof(env, argv[0], &t);
  if (t != napi_function) return throw_type(env, "init(makeError): expected a function");
  addon_inst *inst = get_inst(env);
  if (inst->make_error != NULL) napi_delete_reference(env, inst->make_error);
  napi_create_reference(env, argv[0], 1, &inst->make_error);
  return ret_undefined(env);
}

/* Async so that uv_close() callbacks of our poll handles can run before the
 * env (and its loop) goes away: worker_threads then exit cleanly. */
void teardown_maybe_done(addon_inst *inst) {
  if (inst->tearing_down && inst->pending_closes == 0 && inst->cleanup_handle != NULL) {
    napi_async_cleanup_hook_handle h = inst->cleanup_handle;
    inst->cleanup_handle = NULL;
    napi_remove_async_cleanup_hook(h);
  }
}

static void on_env_cleanup(napi_async_cleanup_hook_handle handle, void *arg) {
  addon_inst *inst = arg;
  inst->tearing_down = true;
  watch_teardown(inst);
  mem_teardown(inst);
  teardown_maybe_done(inst);
}

static void inst_finalize(napi_env env, void *data, void *hint) {
  addon_inst *inst = data;
  if (inst->make_error != NULL) napi_delete_reference(env, inst->make_error);
  free(inst);
}

static void set_const(napi_env env, napi_value obj, const char *name, int64_t v) {
  napi_value n;
  napi_create_int64(env, v, &n);
  napi_set_named_property(env, obj, name, n);
}

static napi_value Init(napi_env env, napi_value exports) {
  addon_inst *inst = calloc(1, sizeof *inst);
  if (inst == NULL) {
    napi_throw_error(env, NULL, "vhost_user_native: out of memory");
    return NULL;
  }
  inst->env = env;
  list_init(&inst->watchers);
  list_init(&inst->mappings);
  napi_set_instance_data(env, inst, inst_finalize, NULL);
  napi_add_async_cleanup_hook(env, on_env_cleanup, inst, &inst->cleanup_handle);

  /* The SIGBUS guard (and its eventfd) exist from load time on, so they are part of every fd
   * baseline and a failure to install is known before any mapping; errors resurface at mmap. */
  (void)guard_install();

  static const export_fn fns[] = {{"init", js_init}};
  register_fns(env, exports, fns, sizeof fns / sizeof fns[0]);
  sock_register(env, exports);
  mem_register(env, exports);
  watch_register(env, exports);
  fdops_register(env, exports);
  netlink_register(env, exports);
  uring_register(env, exports);
  uffd_register_fns(env, exports);

  napi_value c;
  napi_create_object(env, &c);
  set_const(env, c, "PROT_READ", PROT_READ);
  set_const(env, c, "PROT_WRITE", PROT_WRITE);
  set_const(env, c, "MAP_SHARED", MAP_SHARED);
  set_const(env, c, "MAP_PRIVATE", MAP_PRIVATE);
  set_const(env, c, "EFD_NONBLOCK", EFD_NONBLOCK);
  set_const(env, c, "EFD_CLOEXEC", EFD_CLOEXEC);
  set_const(env, c, "EFD_SEMAPHORE", EFD_SEMAPHORE);
  set_const(env, c, "MFD_CLOEXEC", MFD_CLOEXEC);
  set_const(env, c, "MFD_ALLOW_SEALING", MFD_ALLOW_SEALING);
  set_const(env, c, "F_SEAL_SEAL", F_SEAL_SEAL);
  set_const(env, c, "F_SEAL_SHRINK", F_SEAL_SHRINK);
  set_const(env, c, "F_SEAL_GROW", F_SEAL_GROW);
  set_const(env, c, "F_SEAL_WRITE", F_SEAL_WRITE);
  set_const(env, c, "F_SEAL_FUTURE_WRITE", F_SEAL_FUTURE_WRITE);
  set_const(env, c, "POLLIN", UV_READABLE);
  set_const(env, c, "POLLOUT", UV_WRITABLE);
  set_const(env, c, "MAX_FDS_PER_MESSAGE", MAX_FDS_PER_MESSAGE);
  set_const(env, c, "FALLOC_FL_KEEP_SIZE", FALLOC_FL_KEEP_SIZE);
  set_const(env, c, "FALLOC_FL_PUNCH_HOLE", FALLOC_FL_PUNCH_HOLE);
  set_const(env, c, "FALLOC_FL_ZERO_RANGE", FALLOC_FL_ZERO_RANGE);
  set_const(env, c, "BLKGETSIZE64", (int64_t)BLKGETSIZE64);
  set_const(env, c, "BLKSSZGET", (int64_t)BLKSSZGET);
  set_const(env, c, "BLKPBSZGET", (int64_t)BLKPBSZGET);
  set_const(env, c, "BLKDISCARD", (int64_t)BLKDISCARD);
  set_const(env, c, "BLKZEROOUT", (int64_t)BLKZEROOUT);
  napi_set_named_property(env, exports, "constants", c);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
