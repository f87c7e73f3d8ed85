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

bool arg_i32(napi_env env, napi_value v, int32_t *out, const char *what) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t != napi_number) {
    throw_type(env, what);
    return false;
  }
  napi_get_value_int32(env, v, out);
  return true;
}

/* Accepts a non-negative safe integer Number or a BigInt. */
bool arg_u64(napi_env env, napi_value v, uint64_t *out, const char *what) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t == napi_bigint) {
    bool lossless;
    napi_get_value_bigint_uint64(env, v, out, &lossless);
    if (!lossless) {
      throw_type(env, what);
      return false;
    }
    return true;
  }
  if (t == napi_number) {
    double d;
    napi_get_value_double(env, v, &d);
    if (d >= 0 && d <= 9007199254740991.0 && d == (double)(uint64_t)d) {
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

  static const export_fn fns[] = {{"init", js_init}};
  register_fns(env, exports, fns, sizeof fns / sizeof fns[0]);
  sock_register(env, exports);
  mem_register(env, exports);
  watch_register(env, exports);
  fdops_register(env, exports);

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
