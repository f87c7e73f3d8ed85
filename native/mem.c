/*
 * mmap regions exposed as overlapping external ArrayBuffer windows.
 *
 * V8 caps an ArrayBuffer at 4 GiB, so window i starts at i * WINDOW_STRIDE
 * (2 GiB) and spans min(WINDOW_SIZE (4 GiB), length - i * WINDOW_STRIDE):
 * any range of at most 2 GiB lies entirely inside one window.
 *
 * The windows have no GC finalizer: only munmap() (or env teardown) releases
 * the mapping, and munmap() first detaches every window so stale views throw
 * TypeError instead of touching unmapped memory.
 */
#include "addon.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>

#define WINDOW_STRIDE ((uint64_t)1 << 31)
#define WINDOW_SIZE ((uint64_t)1 << 32)

typedef struct mapping {
  list_node link; /* first member: inst->mappings links to it */
  uint8_t *addr;
  size_t len;
  napi_ref windows; /* strong ref to the JS array of windows, until unmap */
  bool mapped;
  bool orphaned; /* JS handle collected while still mapped: teardown frees it */
  bool borrowed; /* wrapMemory: another thread owns the mapping; never munmap it */
} mapping;

static void unmap_region(mapping *m) {
  if (m->mapped) {
    if (!m->borrowed) munmap(m->addr, m->len);
    m->mapped = false;
  }
}

/* The handle may be collected while the region is mapped (the Mapping object
 * was dropped without unmap()); views over the windows may still be alive, so
 * the region deliberately stays mapped until env teardown. */
static void mapping_finalize(napi_env env, void *data, void *hint) {
  mapping *m = data;
  if (m->windows != NULL) {
    napi_delete_reference(env, m->windows);
    m->windows = NULL;
  }
  if (m->mapped) {
    m->orphaned = true; /* stays on the env list; mem_teardown unmaps and frees */
    return;
  }
  list_remove(&m->link); /* already self-linked; harmless */
  free(m);
}

/* Builds [handle, address, windows] for addr/length; on failure releases
 * the region (munmap unless borrowed) and returns NULL with an exception. */
static napi_value make_mapping(napi_env env, uint8_t *addr, uint64_t length, bool borrowed) {
  mapping *m = calloc(1, sizeof *m);
  if (m == NULL) {
    if (!borrowed) munmap(addr, (size_t)length);
    return throw_errno(env, ENOMEM, "mmap", "out of memory");
  }
  m->addr = addr;
  m->len = (size_t)length;
  m->mapped = true;
  m->borrowed = borrowed;
  list_init(&m->link);

  uint32_t nwin = (uint32_t)((length + WINDOW_STRIDE - 1) / WINDOW_STRIDE);
  napi_value wins;
  napi_create_array_with_length(env, nwin, &wins);
  for (uint32_t i = 0; i < nwin; i++) {
    uint64_t start = (uint64_t)i * WINDOW_STRIDE;
    uint64_t size = length - start < WINDOW_SIZE ? length - start : WINDOW_SIZE;
    napi_value ab;
    if (napi_create_external_arraybuffer(env, m->addr + start, (size_t)size, NULL, NULL, &ab) != napi_ok) {
      /* Windows made so far must not outlive the mapping. */
      for (uint32_t j = 0; j < i; j++) {
        napi_value w;
        napi_get_element(env, wins, j, &w);
        napi_detach_arraybuffer(env, w);
      }
      bool pending;
      napi_is_exception_pending(env, &pending);
      if (pending) {
        napi_value exc;
        napi_get_and_clear_last_exception(env, &exc);
      }
      unmap_region(m);
      free(m);
      return throw_errno(env, ENOMEM, "mmap", "cannot create external ArrayBuffer window");
    }
    napi_set_element(env, wins, i, ab);
  }
  napi_create_reference(env, wins, 1, &m->windows);

  napi_value handle, address, result;
  if (napi_create_external(env, m, mapping_finalize, NULL, &handle) != napi_ok) {
    napi_delete_reference(env, m->windows);
    unmap_region(m);
    free(m);
    return NULL;
  }
  list_insert(&get_inst(env)->mappings, &m->link);
  napi_create_bigint_uint64(env, (uint64_t)(uintptr_t)addr, &address);
  napi_create_array_with_length(env, 3, &result);
  napi_set_element(env, result, 0, handle);
  napi_set_element(env, result, 1, address);
  napi_set_element(env, result, 2, wins);
  return result;
}

static napi_value js_mmap(napi_env env, napi_callback_info info) {
  GET_ARGS(5);
  int32_t fd, prot, flags;
  uint64_t offset, length;
  if (!arg_i32(env, argv[0], &fd, "fd must be a number") ||
      !arg_u64(env, argv[1], &offset, "offset must be a non-negative integer") ||
      !arg_u64(env, argv[2], &length, "length must be a non-negative integer") ||
      !arg_i32(env, argv[3], &prot, "prot must be a number") ||
      !arg_i32(env, argv[4], &flags, "flags must be a number"))
    return NULL;
  if (length == 0) return throw_errno(env, EINVAL, "mmap", "length is 0");
  void *addr = mmap(NULL, (size_t)length, prot, flags, fd, (off_t)offset);
  if (addr == MAP_FAILED) return throw_errno(env, errno, "mmap", NULL);
  return make_mapping(env, addr, length, false);
}

/* wrapMemory(address, length): windows over a mapping that another thread of
 * this process owns (a worker given guest memory by the main thread). The
 * caller guarantees the mapping outlives the windows; munmap(handle) and env
 * teardown only detach them. */
static napi_value js_wrap_memory(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  uint64_t address, length;
  if (!arg_u64(env, argv[0], &address, "address must be a non-negative integer") ||
      !arg_u64(env, argv[1], &length, "length must be a non-negative integer"))
    return NULL;
  if (address == 0 || length == 0) return throw_errno(env, EINVAL, "wrapMemory", "address or length is 0");
  if (address > UINTPTR_MAX - length) return throw_errno(env, EINVAL, "wrapMemory", "range wraps around");
  return make_mapping(env, (uint8_t *)(uintptr_t)address, length, true);
}

/* munmap(handle): detach every window, then unmap. Idempotent. */
static napi_value js_munmap(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  void *data;
  if (napi_get_value_external(env, argv[0], &data) != napi_ok)
    return throw_type(env, "expected a mapping handle");
  mapping *m = data;
  if (m->windows != NULL) {
    napi_value wins;
    uint32_t n = 0;
    napi_get_reference_value(env, m->windows, &wins);
    napi_get_array_length(env, wins, &n);
    for (uint32_t i = 0; i < n; i++) {
      napi_value w;
      napi_get_element(env, wins, i, &w);
      napi_detach_arraybuffer(env, w);
    }
    napi_delete_reference(env, m->windows);
    m->windows = NULL;
  }
  unmap_region(m);
  list_remove(&m->link);
  return ret_undefined(env);
}

/* Env teardown: no JS can touch the windows any more, so unmap everything.
 * Nodes are unlinked (self-linked) so later finalizers never touch the list. */
void mem_teardown(addon_inst *inst) {
  while (!list_empty(&inst->mappings)) {
    mapping *m = (mapping *)inst->mappings.next;
    list_remove(&m->link);
    unmap_region(m);
    if (m->orphaned) free(m); /* otherwise the handle's finalizer frees it */
  }
}

void mem_register(napi_env env, napi_value exports) {
  static const export_fn fns[] = {{"mmap", js_mmap}, {"munmap", js_munmap}, {"wrapMemory", js_wrap_memory}};
  register_fns(env, exports, fns, sizeof fns / sizeof fns[0]);
}
