/*
 * mmap regions exposed as overlapping external ArrayBuffer windows.
 *
 * V8 caps an ArrayBuffer at 4 GiB, so window i starts at i * WINDOW_STRIDE
 * (2 GiB) and spans min(WINDOW_SIZE (4 GiB), length - i * WINDOW_STRIDE):
 * any range of at most 2 GiB lies entirely inside one window.
 *
 * Windows are created lazily by window(handle, i) and cached in a JS array
 * held by the mapping: mapping a sparse 2^40-byte region costs one mmap, not
 * 512 ArrayBuffers. They have no GC finalizer: only munmap() (or env
 * teardown) releases the mapping, and munmap() first detaches every window
 * created so far so stale views throw TypeError instead of touching unmapped
 * memory.
 *
 * When no hole of the address space holds the whole region (2^47 bytes never fits in x86-64's
 * user space; 2^46 depends on where V8 placed its reservations), the region is mapped window by
 * window instead: each window is its own mmap of the file at its offset, made on first use and
 * guarded like a whole mapping. Such a mapping has no single address (0 is reported), so it
 * cannot be wrapped by another thread.
 *
 * Safety rules enforced here, not in JS:
 * - mappings are always PROT_READ | PROT_WRITE: a read-only mapping would
 *   need a read-only ArrayBuffer, which V8 does not have, and one write
 *   through a writable view of it is a SIGSEGV. No caller needs one.
 * - the file range is checked against the file size (fstat, or
 *   BLKGETSIZE64 for block devices) before mmap, because touching a page
 *   past the end of the file is a SIGBUS. Files of other types (character
 *   devices, sockets...) have no meaningful size and are refused. On
 *   hugetlbfs st_size is the ftruncate()d size (a multiple of the huge page
 *   size), so the same check holds; tmpfs (/dev/shm) files are regular files.
 * - MAP_SHARED mappings of files that can still shrink (everything but a
 *   memfd sealed with F_SEAL_SHRINK) are registered with the SIGBUS guard
 *   (guard.c), which survives a truncation after the check.
 */
#include "addon.h"

#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#define WINDOW_STRIDE ((uint64_t)1 << 31)
#define WINDOW_SIZE ((uint64_t)1 << 32)
#define MAX_LENGTH ((uint64_t)9007199254740991ULL) /* lengths are JS numbers */

typedef struct mapping {
  list_node link; /* first member: inst->mappings links to it */
  uint8_t *addr;  /* NULL for a sparse mapping */
  size_t len;
  /* Sparse mapping: the address space had no hole for the whole region, so each window is its own
   * mmap of the file, made on first use (the region is never touched as one range). */
  bool sparse;
  int fd;            /* sparse: our dup of the file */
  uint64_t offset;   /* sparse: file offset of byte 0 */
  int prot, flags;   /* sparse: mmap arguments of each window */
  bool guard_windows; /* sparse: register each window with the SIGBUS guard */
  size_t page_size;  /* sparse: guard granularity */
  uint8_t **win_addr; /* sparse: each window's address, or NULL */
  int *win_slot;      /* sparse: each window's guard slot, or -1 */
  uint32_t nwin;
  uint32_t id;
  int guard_slot;   /* SIGBUS guard slot, or -1 when not guarded */
  napi_ref windows; /* strong ref to the JS array of windows created so far, until unmap */
  bool mapped;
  bool orphaned; /* JS handle collected while still mapped: teardown frees it */
  bool borrowed; /* wrapMemory: another thread owns the mapping; never munmap it */
} mapping;

/* Process-wide so ids stay unique across worker threads (the guard is process-wide). */
static atomic_uint next_mapping_id = 1;

static const napi_type_tag mapping_tag = {0x7668752d6d617070ULL, 0x696e6731c0ffee02ULL};

/* Bytes of window i: WINDOW_SIZE, or what is left of the mapping. */
static size_t window_length(const mapping *m, uint64_t i) {
  uint64_t start = i * WINDOW_STRIDE;
  return (size_t)(m->len - start < WINDOW_SIZE ? m->len - start : WINDOW_SIZE);
}

static void unmap_region(mapping *m) {
  if (m->mapped) {
    if (m->guard_slot >= 0) guard_unregister(m->guard_slot);
    m->guard_slot = -1;
    if (m->sparse) {
      for (uint32_t i = 0; i < m->nwin; i++) {
        if (m->win_slot[i] >= 0) guard_unregister(m->win_slot[i]);
        if (m->win_addr[i] != NULL) munmap(m->win_addr[i], window_length(m, i));
      }
      free(m->win_addr);
      free(m->win_slot);
      m->win_addr = NULL;
      m->win_slot = NULL;
      close(m->fd);
      m->fd = -1;
    } else if (!m->borrowed) {
      munmap(m->addr, m->len);
    }
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

static mapping *get_mapping(napi_env env, napi_value v) {
  napi_valuetype t;
  bool tagged = false;
  void *data = NULL;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external ||
      napi_check_object_type_tag(env, v, &mapping_tag, &tagged) != napi_ok || !tagged ||
      napi_get_value_external(env, v, &data) != napi_ok || data == NULL) {
    throw_type(env, "expected a mapping handle");
    return NULL;
  }
  return data;
}

/* Builds [handle, address, id, guarded] for addr/length; on failure releases
 * the region (munmap unless borrowed) and returns NULL with an exception. */
static napi_value make_mapping(napi_env env, uint8_t *addr, uint64_t length, bool borrowed, int guard_slot, uint32_t id,
                               const mapping *sparse) {
  mapping *m = calloc(1, sizeof *m);
  napi_value wins, handle, address, result, v;
  uint32_t nwin = (uint32_t)((length + WINDOW_STRIDE - 1) / WINDOW_STRIDE);
  if (m != NULL && sparse != NULL) {
    m->win_addr = calloc(nwin, sizeof *m->win_addr);
    m->win_slot = malloc(nwin * sizeof *m->win_slot);
    if (m->win_addr == NULL || m->win_slot == NULL) {
      free(m->win_addr);
      free(m->win_slot);
      free(m);
      m = NULL;
    }
  }
  if (m == NULL) {
    if (guard_slot >= 0) guard_unregister(guard_slot);
    if (sparse != NULL) close(sparse->fd);
    else if (!borrowed) munmap(addr, (size_t)length);
    return throw_errno(env, ENOMEM, "mmap", "out of memory");
  }
  m->fd = -1;
  if (sparse != NULL) {
    m->sparse = true;
    m->fd = sparse->fd;
    m->offset = sparse->offset;
    m->prot = sparse->prot;
    m->flags = sparse->flags;
    m->guard_windows = sparse->guard_windows;
    m->page_size = sparse->page_size;
    for (uint32_t i = 0; i < nwin; i++) m->win_slot[i] = -1;
  }
  m->addr = addr;
  m->len = (size_t)length;
  m->nwin = nwin;
  m->id = id;
  m->guard_slot = guard_slot;
  m->mapped = true;
  m->borrowed = borrowed;
  list_init(&m->link);
  bool external = false;
  if (napi_create_array_with_length(env, m->nwin, &wins) != napi_ok ||
      napi_create_reference(env, wins, 1, &m->windows) != napi_ok ||
      !(external = napi_create_external(env, m, mapping_finalize, NULL, &handle) == napi_ok) ||
      napi_type_tag_object(env, handle, &mapping_tag) != napi_ok) {
    if (m->windows != NULL) napi_delete_reference(env, m->windows);
    m->windows = NULL;
    unmap_region(m);
    if (!external) free(m); /* otherwise the unreachable external's finalizer frees it */
    return NULL;
  }
  list_insert(&get_inst(env)->mappings, &m->link);
  napi_create_bigint_uint64(env, (uint64_t)(uintptr_t)addr, &address);
  napi_create_array_with_length(env, 4, &result);
  napi_set_element(env, result, 0, handle);
  napi_set_element(env, result, 1, address);
  napi_create_uint32(env, m->id, &v);
  napi_set_element(env, result, 2, v);
  napi_get_boolean(env, guard_slot >= 0 || (m->sparse && m->guard_windows), &v);
  napi_set_element(env, result, 3, v);
  return result;
}

/* What the size check and the guard need to know about an fd. */
typedef struct file_info {
  int kind;           /* FILE_REGULAR, FILE_BLOCK or FILE_OTHER */
  uint64_t size;      /* bytes that may be mapped */
  int seals;          /* F_GET_SEALS result, 0 if the file cannot be sealed */
  uint64_t page_size; /* huge page size on hugetlbfs, else the base page size */
} file_info;

enum { FILE_REGULAR = 0, FILE_BLOCK = 1, FILE_OTHER = 2 };

static int get_file_info(int fd, file_info *fi) {
  struct stat st;
  if (fstat(fd, &st) < 0) return errno;
  fi->seals = 0;
  fi->size = 0;
  fi->page_size = (uint64_t)sysconf(_SC_PAGESIZE);
  if (S_ISREG(st.st_mode)) {
    fi->kind = FILE_REGULAR;
    fi->size = st.st_size < 0 ? 0 : (uint64_t)st.st_size;
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals > 0) fi->seals = seals;
    struct statfs sfs;
    if (fstatfs(fd, &sfs) == 0 && sfs.f_type == HUGETLBFS_MAGIC && sfs.f_bsize > 0) fi->page_size = (uint64_t)sfs.f_bsize;
  } else if (S_ISBLK(st.st_mode)) {
    fi->kind = FILE_BLOCK;
    if (ioctl(fd, BLKGETSIZE64, &fi->size) < 0) return errno;
  } else {
    fi->kind = FILE_OTHER;
  }
  return 0;
}

static bool arg_length(napi_env env, napi_value v, uint64_t *out) {
  if (!arg_u64(env, v, out, "length must be a non-negative integer")) return false;
  if (*out == 0 || *out > MAX_LENGTH) {
    napi_throw_range_error(env, NULL, "length must be in [1, 2^53 - 1]");
    return false;
  }
  return true;
}

/* mmap(fd, offset, length, prot, flags, unsized?) -> [handle, address, id, guarded]
 * `unsized`: the fd is a device file without a size (a VDUSE IOTLB fd); the range is not
 * checked against a size, and the mapping is always SIGBUS-guarded since the kernel may refuse
 * to fault a page in. */
static napi_value js_mmap(napi_env env, napi_callback_info info) {
  GET_ARGS(6);
  bool unsized = false;
  if (!arg_is_undefined(env, argv[5]) && !arg_bool(env, argv[5], &unsized)) return NULL;
  int fd;
  int32_t prot, flags;
  uint64_t offset, length;
  if (!arg_fd(env, argv[0], &fd) ||
      !arg_u64(env, argv[1], &offset, "offset must be a non-negative integer") ||
      !arg_length(env, argv[2], &length) ||
      !arg_flags(env, argv[3], PROT_READ | PROT_WRITE, &prot, "prot") ||
      !arg_flags(env, argv[4], MAP_SHARED | MAP_PRIVATE, &flags, "flags"))
    return NULL;
  if (prot != (PROT_READ | PROT_WRITE)) {
    napi_throw_range_error(env, NULL, "prot must be PROT_READ | PROT_WRITE: a read-only mapping cannot be exposed as an ArrayBuffer safely");
    return NULL;
  }
  if (flags != MAP_SHARED && flags != MAP_PRIVATE) {
    napi_throw_range_error(env, NULL, "flags must be MAP_SHARED or MAP_PRIVATE");
    return NULL;
  }
  if (offset > (uint64_t)INT64_MAX || length > (uint64_t)INT64_MAX - offset) {
    napi_throw_range_error(env, NULL, "offset + length overflows off_t");
    return NULL;
  }
  file_info fi;
  int err = get_file_info(fd, &fi);
  if (err != 0) return throw_errno(env, err, "fstat", NULL);
  char detail[200];
  if (fi.kind == FILE_OTHER && !unsized)
    return throw_errno(env, ENODEV, "mmap", "not a regular file or block device: its size cannot be checked");
  if (!unsized && (offset > fi.size || length > fi.size - offset)) {
    snprintf(detail, sizeof detail, "range 0x%llx+0x%llx ends beyond the end of the file (0x%llx bytes)",
             (unsigned long long)offset, (unsigned long long)length, (unsigned long long)fi.size);
    return throw_errno(env, EINVAL, "mmap", detail);
  }
  void *addr = mmap(NULL, (size_t)length, prot, flags, fd, (off_t)offset);
  uint32_t id = atomic_fetch_add(&next_mapping_id, 1);
  bool guard = !(fi.kind == FILE_REGULAR && (fi.seals & F_SEAL_SHRINK));
  if (addr == MAP_FAILED) {
    err = errno;
    if (err == ENOMEM && length > WINDOW_SIZE) {
      /* No hole in the address space holds the whole region (V8's reservations fragment it):
       * map each window of the file on first use instead. */
      mapping init = {0};
      init.fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
      if (init.fd < 0) return throw_errno(env, errno, "fcntl", "F_DUPFD_CLOEXEC");
      init.offset = offset;
      init.prot = prot;
      init.flags = flags;
      init.guard_windows = guard;
      init.page_size = (size_t)fi.page_size;
      return make_mapping(env, NULL, length, false, -1, id, &init);
    }
    if (err == ENOMEM) {
      snprintf(detail, sizeof detail, "cannot reserve 0x%llx bytes of address space", (unsigned long long)length);
      return throw_errno(env, err, "mmap", detail);
    }
    return throw_errno(env, err, "mmap", NULL);
  }
  int slot = -1;
  /* A private mapping still faults past EOF on pages it has not copied yet. */
  if (guard) {
    slot = guard_register(addr, (size_t)length, (size_t)fi.page_size, id);
    if (slot < 0) {
      munmap(addr, (size_t)length);
      return throw_errno(env, -slot, "mmap", "cannot register the mapping with the SIGBUS guard");
    }
  }
  return make_mapping(env, addr, length, false, slot, id, NULL);
}

/* wrapMemory(address, length): windows over a mapping that another thread of
 * this process owns (a worker given guest memory by the main thread). The
 * caller guarantees the mapping outlives the windows; munmap(handle) and env
 * teardown only detach them. Internal: never exported by the package. */
static napi_value js_wrap_memory(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  uint64_t address, length;
  if (!arg_u64(env, argv[0], &address, "address must be a non-negative integer") ||
      !arg_length(env, argv[1], &length))
    return NULL;
  if (address == 0) return throw_errno(env, EINVAL, "wrapMemory", "address is 0");
  if (address > UINTPTR_MAX - length) return throw_errno(env, EINVAL, "wrapMemory", "range wraps around");
  return make_mapping(env, (uint8_t *)(uintptr_t)address, length, true, -1, atomic_fetch_add(&next_mapping_id, 1), NULL);
}

/* window(handle, index) -> ArrayBuffer, created on first use and cached. */
static napi_value js_window(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  mapping *m = get_mapping(env, argv[0]);
  int64_t i;
  if (m == NULL) return NULL;
  if (!m->mapped || m->windows == NULL) return throw_errno(env, EBADF, "window", "mapping is unmapped");
  if (!arg_int(env, argv[1], 0, (int64_t)m->nwin - 1, &i, "window index")) return NULL;
  napi_value wins, ab;
  napi_valuetype t;
  napi_get_reference_value(env, m->windows, &wins);
  napi_get_element(env, wins, (uint32_t)i, &ab);
  napi_typeof(env, ab, &t);
  if (t != napi_undefined) return ab;
  uint64_t start = (uint64_t)i * WINDOW_STRIDE;
  size_t size = window_length(m, (uint64_t)i);
  uint8_t *base = m->addr + start;
  if (m->sparse) {
    if (m->win_addr[i] == NULL) {
      void *w = mmap(NULL, size, m->prot, m->flags, m->fd, (off_t)(m->offset + start));
      if (w == MAP_FAILED) return throw_errno(env, errno, "mmap", "cannot map a window of a sparse region");
      if (m->guard_windows) {
        int slot = guard_register(w, size, m->page_size, m->id);
        if (slot < 0) {
          munmap(w, size);
          return throw_errno(env, -slot, "mmap", "cannot register a window with the SIGBUS guard");
        }
        m->win_slot[i] = slot;
      }
      m->win_addr[i] = w;
    }
    base = m->win_addr[i];
  }
  /* Not napi_create_external_arraybuffer: V8 would charge the window as external memory and
   * run a full GC per window (see window.cc). */
  ab = window_create(env, base, size);
  if (ab == NULL) {
    bool pending;
    napi_is_exception_pending(env, &pending);
    if (pending) {
      napi_value exc;
      napi_get_and_clear_last_exception(env, &exc);
    }
    return throw_errno(env, ENOMEM, "window", "cannot create external ArrayBuffer window");
  }
  napi_set_element(env, wins, (uint32_t)i, ab);
  return ab;
}

/* munmap(handle): detach every window created so far, then unmap. Idempotent. */
static napi_value js_munmap(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  mapping *m = get_mapping(env, argv[0]);
  if (m == NULL) return NULL;
  if (m->windows != NULL) {
    napi_value wins;
    uint32_t n = 0;
    napi_get_reference_value(env, m->windows, &wins);
    napi_get_array_length(env, wins, &n);
    for (uint32_t i = 0; i < n; i++) {
      napi_value w;
      napi_valuetype t;
      napi_get_element(env, wins, i, &w);
      napi_typeof(env, w, &t);
      if (t != napi_undefined) napi_detach_arraybuffer(env, w);
    }
    napi_delete_reference(env, m->windows);
    m->windows = NULL;
  }
  unmap_region(m);
  list_remove(&m->link);
  return ret_undefined(env);
}

/* fileInfo(fd) -> [kind (0 regular, 1 block, 2 other), size, seals, pageSize] */
static napi_value js_file_info(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int fd;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  file_info fi;
  int err = get_file_info(fd, &fi);
  if (err != 0) return throw_errno(env, err, "fstat", NULL);
  napi_value r;
  napi_create_array_with_length(env, 4, &r);
  napi_set_element(env, r, 0, ret_i32(env, fi.kind));
  napi_set_element(env, r, 1, ret_f64(env, (double)fi.size));
  napi_set_element(env, r, 2, ret_i32(env, fi.seals));
  napi_set_element(env, r, 3, ret_f64(env, (double)fi.page_size));
  return r;
}

#define KNOWN_SEALS (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)

static napi_value js_add_seals(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int fd;
  int32_t seals;
  if (!arg_fd(env, argv[0], &fd) || !arg_flags(env, argv[1], KNOWN_SEALS, &seals, "seals")) return NULL;
  if (fcntl(fd, F_ADD_SEALS, seals) < 0) return throw_errno(env, errno, "fcntl(F_ADD_SEALS)", NULL);
  return ret_undefined(env);
}

static napi_value js_get_seals(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int fd;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  int r = fcntl(fd, F_GET_SEALS);
  if (r < 0) return throw_errno(env, errno, "fcntl(F_GET_SEALS)", NULL);
  return ret_i32(env, r);
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

bool mem_range_mapped(addon_inst *inst, const void *addr, size_t len) {
  uintptr_t a = (uintptr_t)addr;
  if (len == 0 || a > UINTPTR_MAX - len) return false;
  for (list_node *n = inst->mappings.next; n != &inst->mappings; n = n->next) {
    const mapping *m = (const mapping *)n;
    if (!m->mapped) continue;
    if (!m->sparse) {
      uintptr_t b = (uintptr_t)m->addr;
      if (a >= b && a - b <= m->len && len <= m->len - (a - b)) return true;
      continue;
    }
    for (uint32_t i = 0; i < m->nwin; i++) {
      uintptr_t b = (uintptr_t)m->win_addr[i];
      size_t wl = window_length(m, i);
      if (b != 0 && a >= b && a - b <= wl && len <= wl - (a - b)) return true;
    }
  }
  return false;
}

host_iov_status host_iovecs(addon_inst *inst, const double *pairs, uint32_t count, struct iovec *iov) {
  uint64_t total = 0;
  for (uint32_t k = 0; k < count; k++) {
    double a = pairs[2 * (size_t)k], l = pairs[2 * (size_t)k + 1];
    if (!(a > 0 && a <= 9007199254740991.0 && a == (double)(uint64_t)a) || !(l >= 0 && l <= (double)INT_MAX && l == (double)(uint64_t)l))
      return HOST_IOV_MALFORMED;
    void *base = (void *)(uintptr_t)(uint64_t)a;
    if (!mem_range_mapped(inst, base, (size_t)l)) return HOST_IOV_UNMAPPED;
    iov[k].iov_base = base;
    iov[k].iov_len = (size_t)l;
    total += (uint64_t)l;
  }
  return total > INT_MAX ? HOST_IOV_TOO_LONG : HOST_IOV_OK;
}

const char *host_iov_reason(host_iov_status s) {
  switch (s) {
    case HOST_IOV_MALFORMED: return "malformed [address, length] pair";
    case HOST_IOV_UNMAPPED: return "range outside every live mapping";
    case HOST_IOV_TOO_LONG: return "transfer longer than 2 GiB";
    default: return NULL;
  }
}

void mem_register(napi_env env, napi_value exports) {
  static const export_fn fns[] = {
      {"mmap", js_mmap},           {"munmap", js_munmap},       {"wrapMemory", js_wrap_memory},
      {"window", js_window},       {"fileInfo", js_file_info},  {"addSeals", js_add_seals},
      {"getSeals", js_get_seals},
  };
  register_fns(env, exports, fns, sizeof fns / sizeof fns[0]);
  guard_register_fns(env, exports);
}
