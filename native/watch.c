/*
 * fd watchers: uv_poll handles on the calling thread's own libuv loop (so
 * they work in worker_threads) invoking a JS callback(status, events).
 *
 * Hot path (virtqueue kicks): on_poll does no allocation; it opens a handle
 * scope and calls napi_make_callback, which also drains process.nextTick and
 * microtasks queued by the callback, like any libuv-driven node callback.
 *
 * Exceptions thrown by the callback are not swallowed: they are handed to
 * napi_fatal_exception, i.e. they become an 'uncaughtException' of the thread
 * (process exit in the main thread unless handled; 'error' on the Worker).
 *
 * Lifetime: a watcher has two owners, the uv handle (released by the uv_close
 * callback) and the JS handle object (released by its GC finalizer); memory
 * is freed when both are gone, so a stale JS handle never dangles.
 */
#include "addon.h"

#include <errno.h>
#include <stdlib.h>

typedef struct watcher {
  list_node link; /* first member: inst->watchers links to it */
  uv_poll_t poll;
  addon_inst *inst;
  napi_env env;
  napi_ref cb;
  napi_async_context actx;
  int owners;
  bool closing;
} watcher;

static void watcher_release(watcher *w) {
  if (--w->owners == 0) free(w);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  watcher *w = h->data;
  if (w->closing) return;
  napi_env env = w->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value cb, argv[2], result;
  napi_get_reference_value(env, w->cb, &cb);
  napi_create_int32(env, status, &argv[0]);
  napi_create_int32(env, events, &argv[1]);
  /* w may be closed by the callback; uv_close defers the free, so w stays valid here.
   * The receiver must be an object; the callback itself is one, and fetching the global
   * (v8::Context::Global) showed up at 2% of a QD1 daemon's samples. */
  if (napi_make_callback(env, w->actx, cb, cb, 2, argv, &result) != napi_ok) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (pending) {
      napi_value exc;
      napi_get_and_clear_last_exception(env, &exc);
      napi_fatal_exception(env, exc);
    }
  }
  napi_close_handle_scope(env, scope);
}

static void on_close(uv_handle_t *h) {
  watcher *w = h->data;
  addon_inst *inst = w->inst;
  napi_env env = w->env;
  napi_handle_scope scope;
  bool scoped = napi_open_handle_scope(env, &scope) == napi_ok;
  napi_delete_reference(env, w->cb);
  w->cb = NULL;
  napi_async_destroy(env, w->actx);
  w->actx = NULL;
  if (scoped) napi_close_handle_scope(env, scope);
  inst->pending_closes--;
  watcher_release(w);
  teardown_maybe_done(inst);
}

static void watcher_close(watcher *w) {
  if (w->closing) return;
  w->closing = true;
  list_remove(&w->link);
  uv_poll_stop(&w->poll);
  w->inst->pending_closes++;
  uv_close((uv_handle_t *)&w->poll, on_close);
}

static void watcher_finalize(napi_env env, void *data, void *hint) {
  watcher_release(data);
}

/* Distinguishes watcher handles from every other external (mappings, other
 * addons' objects): a foreign object throws TypeError instead of being cast. */
static const napi_type_tag watcher_tag = {0x7668752d77617463ULL, 0x68657231c0ffee01ULL};

static watcher *get_watcher(napi_env env, napi_value v) {
  void *data = NULL;
  napi_valuetype t;
  bool tagged = false;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external ||
      napi_check_object_type_tag(env, v, &watcher_tag, &tagged) != napi_ok || !tagged ||
      napi_get_value_external(env, v, &data) != napi_ok || data == NULL) {
    throw_type(env, "expected a watcher handle");
    return NULL;
  }
  return data;
}

/* watch(fd, events, callback) -> handle; started at once unless events == 0. */
static napi_value js_watch(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  int32_t fd, events;
  if (!arg_fd(env, argv[0], &fd) ||
      !arg_flags(env, argv[1], UV_READABLE | UV_WRITABLE, &events, "events"))
    return NULL;
  napi_valuetype t;
  napi_typeof(env, argv[2], &t);
  if (t != napi_function) return throw_type(env, "callback must be a function");
  uv_loop_t *loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) return NULL;

  watcher *w = calloc(1, sizeof *w);
  if (w == NULL) return throw_errno(env, ENOMEM, "watchFd", NULL);
  w->env = env;
  w->inst = get_inst(env);
  list_init(&w->link);
  int r = uv_poll_init(loop, &w->poll, fd);
  if (r < 0) {
    free(w);
    return throw_errno(env, -r, "uv_poll_init", NULL);
  }
  w->poll.data = w;
  w->owners = 1; /* the uv handle */
  napi_create_reference(env, argv[2], 1, &w->cb);
  napi_value name, handle;
  napi_create_string_utf8(env, "vhost-user:FdWatcher", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, NULL, name, &w->actx);
  list_insert(&w->inst->watchers, &w->link);
  if (events != 0 && (r = uv_poll_start(&w->poll, events, on_poll)) < 0) {
    watcher_close(w);
    return throw_errno(env, -r, "uv_poll_start", NULL);
  }
  if (napi_create_external(env, w, watcher_finalize, NULL, &handle) != napi_ok) {
    watcher_close(w);
    return NULL;
  }
  w->owners++;
  napi_type_tag_object(env, handle, &watcher_tag);
  return handle;
}

static napi_value js_watch_start(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int32_t events;
  watcher *w = get_watcher(env, argv[0]);
  if (w == NULL || !arg_flags(env, argv[1], UV_READABLE | UV_WRITABLE, &events, "events"))
    return NULL;
  if (w->closing) return throw_errno(env, EBADF, "uv_poll_start", "watcher is closed");
  int r = events == 0 ? uv_poll_stop(&w->poll) : uv_poll_start(&w->poll, events, on_poll);
  if (r < 0) return throw_errno(env, -r, "uv_poll_start", NULL);
  return ret_undefined(env);
}

static napi_value js_watch_stop(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  watcher *w = get_watcher(env, argv[0]);
  if (w == NULL) return NULL;
  if (!w->closing) uv_poll_stop(&w->poll);
  return ret_undefined(env);
}

static napi_value js_watch_close(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  watcher *w = get_watcher(env, argv[0]);
  if (w == NULL) return NULL;
  watcher_close(w);
  return ret_undefined(env);
}

static napi_value js_watch_ref(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  bool on;
  watcher *w = get_watcher(env, argv[0]);
  if (w == NULL || !arg_bool(env, argv[1], &on)) return NULL;
  if (!w->closing) {
    if (on) uv_ref((uv_handle_t *)&w->poll);
    else uv_unref((uv_handle_t *)&w->poll);
  }
  return ret_undefined(env);
}

void watch_teardown(addon_inst *inst) {
  while (!list_empty(&inst->watchers)) watcher_close((watcher *)inst->watchers.next);
}

void watch_register(napi_env env, napi_value exports) {
  static const export_fn fns[] = {
      {"watch", js_watch},         {"watchStart", js_watch_start}, {"watchStop", js_watch_stop},
      {"watchClose", js_watch_close}, {"watchRef", js_watch_ref},
  };
  register_fns(env, exports, fns, sizeof fns / sizeof fns[0]);
}
