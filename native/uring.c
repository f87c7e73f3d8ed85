/*
 * io_uring data path: raw io_uring_setup / io_uring_enter / io_uring_register
 * and the mmap'ed SQ/CQ rings, no liburing. JS owns three Float64Arrays
 * allocated here (so their memory never moves):
 *
 *   sqes:  SUBMIT_FIELDS doubles per staged operation
 *          [op, fd, iov index, iov count, file offset, user data]
 *   iovs:  pairs [host address, length] referenced by the staged operations
 *   cqes:  pairs [user data, result (bytes or -errno)] filled by reap()
 *
 * Host addresses are exact doubles (user space is below 2^47). Every iovec
 * must lie inside a live mapping of this thread (mem_range_mapped): the TS
 * layer validates first, this is the last line of defence, so a bad address
 * never reaches the kernel. With IORING_FEAT_SUBMIT_STABLE (required) the
 * kernel has consumed the iovecs once io_uring_enter returns, so one native
 * iovec array is reused by every submit().
 *
 * Completions are signalled on an eventfd registered with the ring; the JS
 * side watches it with uv_poll and calls reap() per wake-up.
 */
#include "addon.h"

#include <errno.h>
#include <limits.h>
#include <linux/io_uring.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#define SUBMIT_FIELDS 6
#define MAX_ENTRIES 65536 /* beyond the kernel limit (32768), which refuses it itself */
#define MAX_IOVS_PER_OP 1024

enum { OP_READ = 0, OP_WRITE = 1, OP_FSYNC = 2, OP_FDATASYNC = 3, OP_NOP = 4 };

typedef struct uring {
  int fd;
  unsigned sq_entries, cq_entries;
  void *sq_ptr, *cq_ptr;
  size_t sq_len, cq_len;
  struct io_uring_sqe *sqes;
  size_t sqes_len;
  _Atomic unsigned *sq_head, *sq_tail, *cq_head, *cq_tail;
  unsigned *sq_mask, *sq_array, *cq_mask;
  struct io_uring_cqe *cqes;
  /* JS-visible staging arrays (native-allocated ArrayBuffers, kept alive by refs). */
  double *sub, *iov, *comp;
  uint32_t sub_cap, iov_cap, comp_cap;
  napi_ref sub_ref, iov_ref, comp_ref;
  struct iovec *kiov; /* iov_cap native iovecs, rebuilt per submit */
  uint64_t inflight;  /* submitted and not reaped: close() waits for them */
  int efd;            /* the registered eventfd (owned by JS), cleared by reap() */
  addon_inst *inst;
  napi_env env;
  bool closed;
} uring;

static const napi_type_tag uring_tag = {0x7668752d7572696eULL, 0x6731c0ffee000003ULL};

static int sys_setup(unsigned entries, struct io_uring_params *p) {
  return (int)syscall(__NR_io_uring_setup, entries, p);
}
static int sys_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags) {
  return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, NULL, 0);
}
static int sys_register(int fd, unsigned op, void *arg, unsigned nr) {
  return (int)syscall(__NR_io_uring_register, fd, op, arg, nr);
}

/* Waits for every submitted operation, so guest memory is never written after close. */
static void ring_drain(uring *r) {
  while (r->inflight > 0) {
    unsigned head = atomic_load_explicit(r->cq_head, memory_order_relaxed);
    unsigned tail = atomic_load_explicit(r->cq_tail, memory_order_acquire);
    if (head != tail) {
      r->inflight -= (tail - head) > r->inflight ? r->inflight : (tail - head);
      atomic_store_explicit(r->cq_head, tail, memory_order_release);
      continue;
    }
    int n = sys_enter(r->fd, 0, 1, IORING_ENTER_GETEVENTS);
    if (n < 0 && errno != EINTR && errno != EAGAIN) break;
  }
}

static void ring_release(uring *r) {
  if (r->closed) return;
  r->closed = true;
  ring_drain(r);
  if (r->sqes != NULL) munmap(r->sqes, r->sqes_len);
  if (r->cq_ptr != NULL && r->cq_ptr != r->sq_ptr) munmap(r->cq_ptr, r->cq_len);
  if (r->sq_ptr != NULL) munmap(r->sq_ptr, r->sq_len);
  if (r->fd >= 0) close(r->fd);
  r->fd = -1;
  free(r->kiov);
  r->kiov = NULL;
}

static void env_cleanup(void *arg) {
  ring_release(arg);
}

static void uring_finalize(napi_env env, void *data, void *hint) {
  uring *r = data;
  if (!r->closed) {
    ring_release(r);
    napi_remove_env_cleanup_hook(env, env_cleanup, r);
  }
  if (r->sub_ref != NULL) napi_delete_reference(env, r->sub_ref);
  if (r->iov_ref != NULL) napi_delete_reference(env, r->iov_ref);
  if (r->comp_ref != NULL) napi_delete_reference(env, r->comp_ref);
  free(r);
}

static uring *get_uring(napi_env env, napi_value v) {
  napi_valuetype t;
  bool tagged = false;
  void *data = NULL;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external ||
      napi_check_object_type_tag(env, v, &uring_tag, &tagged) != napi_ok || !tagged ||
      napi_get_value_external(env, v, &data) != napi_ok || data == NULL) {
    throw_type(env, "expected an io_uring handle");
    return NULL;
  }
  uring *r = data;
  if (r->closed) {
    throw_errno(env, EBADF, "io_uring", "ring is closed");
    return NULL;
  }
  return r;
}

/* A Float64Array of n doubles over native memory that never moves. */
static napi_value make_f64(napi_env env, uint32_t n, double **data, napi_ref *ref) {
  napi_value ab, ta;
  void *p;
  if (napi_create_arraybuffer(env, (size_t)n * sizeof(double), &p, &ab) != napi_ok ||
      napi_create_typedarray(env, napi_float64_array, n, ab, 0, &ta) != napi_ok ||
      napi_create_reference(env, ta, 1, ref) != napi_ok)
    return NULL;
  *data = p;
  return ta;
}

/* uringSetup(entries, eventfd, iovCapacity) -> [handle, sqes, iovs, cqes]
 * Throws ENOSYS / EPERM (io_uring unavailable or disabled) like any syscall. */
static napi_value js_setup(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  int64_t entries, iov_cap;
  int efd;
  int64_t efd_arg;
  if (!arg_int(env, argv[0], 1, MAX_ENTRIES, &entries, "entries") || !arg_int(env, argv[1], -1, INT_MAX, &efd_arg, "eventfd") ||
      !arg_int(env, argv[2], 1, 1 << 20, &iov_cap, "iovCapacity"))
    return NULL;
  efd = (int)efd_arg;
  struct io_uring_params p;
  memset(&p, 0, sizeof p);
  p.flags = IORING_SETUP_CQSIZE;
  p.cq_entries = (unsigned)entries * 2;
  int fd = sys_setup((unsigned)entries, &p);
  if (fd < 0) return throw_errno(env, errno, "io_uring_setup", NULL);
  uring *r = calloc(1, sizeof *r);
  if (r == NULL) {
    close(fd);
    return throw_errno(env, ENOMEM, "io_uring_setup", NULL);
  }
  r->fd = fd;
  r->env = env;
  r->inst = get_inst(env);
  const char *what = NULL;
  int err = 0;
  if (!(p.features & IORING_FEAT_SUBMIT_STABLE)) {
    err = ENOSYS;
    what = "kernel lacks IORING_FEAT_SUBMIT_STABLE";
    goto fail;
  }
  r->sq_entries = p.sq_entries;
  r->cq_entries = p.cq_entries;
  r->sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
  r->cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
  if (p.features & IORING_FEAT_SINGLE_MMAP) {
    if (r->cq_len > r->sq_len) r->sq_len = r->cq_len;
    r->cq_len = r->sq_len;
  }
  r->sq_ptr = mmap(NULL, r->sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
  if (r->sq_ptr == MAP_FAILED) {
    r->sq_ptr = NULL;
    err = errno;
    what = "mmap of the SQ ring";
    goto fail;
  }
  if (p.features & IORING_FEAT_SINGLE_MMAP) {
    r->cq_ptr = r->sq_ptr;
  } else {
    r->cq_ptr = mmap(NULL, r->cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_CQ_RING);
    if (r->cq_ptr == MAP_FAILED) {
      r->cq_ptr = NULL;
      err = errno;
      what = "mmap of the CQ ring";
      goto fail;
    }
  }
  r->sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
  r->sqes = mmap(NULL, r->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
  if (r->sqes == MAP_FAILED) {
    r->sqes = NULL;
    err = errno;
    what = "mmap of the SQEs";
    goto fail;
  }
  uint8_t *sq = r->sq_ptr, *cq = r->cq_ptr;
  r->sq_head = (_Atomic unsigned *)(sq + p.sq_off.head);
  r->sq_tail = (_Atomic unsigned *)(sq + p.sq_off.tail);
  r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
  r->sq_array = (unsigned *)(sq + p.sq_off.array);
  r->cq_head = (_Atomic unsigned *)(cq + p.cq_off.head);
  r->cq_tail = (_Atomic unsigned *)(cq + p.cq_off.tail);
  r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
  r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
  /* eventfd -1: no eventfd; the caller polls the ring fd itself, which is readable while the CQ
   * holds completions, so reaping (moving the CQ head in shared memory) is what clears it: no
   * syscall per wake-up to reset a counter. */
  if (efd >= 0 && sys_register(fd, IORING_REGISTER_EVENTFD, &efd, 1) < 0) {
    err = errno;
    what = "IORING_REGISTER_EVENTFD";
    goto fail;
  }
  r->efd = efd;
  r->iov_cap = (uint32_t)iov_cap;
  r->sub_cap = r->sq_entries;
  r->comp_cap = r->cq_entries;
  r->kiov = calloc(r->iov_cap, sizeof *r->kiov);
  if (r->kiov == NULL) {
    err = ENOMEM;
    what = "iovec table";
    goto fail;
  }
  napi_value handle, subs, iovs, comps, result;
  if ((subs = make_f64(env, r->sub_cap * SUBMIT_FIELDS, &r->sub, &r->sub_ref)) == NULL ||
      (iovs = make_f64(env, r->iov_cap * 2, &r->iov, &r->iov_ref)) == NULL ||
      (comps = make_f64(env, r->comp_cap * 2, &r->comp, &r->comp_ref)) == NULL ||
      napi_create_external(env, r, uring_finalize, NULL, &handle) != napi_ok) {
    ring_release(r);
    if (r->sub_ref != NULL) napi_delete_reference(env, r->sub_ref);
    if (r->iov_ref != NULL) napi_delete_reference(env, r->iov_ref);
    if (r->comp_ref != NULL) napi_delete_reference(env, r->comp_ref);
    free(r);
    return NULL;
  }
  napi_type_tag_object(env, handle, &uring_tag);
  napi_add_env_cleanup_hook(env, env_cleanup, r);
  napi_create_array_with_length(env, 4, &result);
  napi_set_element(env, result, 0, handle);
  napi_set_element(env, result, 1, subs);
  napi_set_element(env, result, 2, iovs);
  napi_set_element(env, result, 3, comps);
  return result;
fail:
  ring_release(r);
  free(r);
  return throw_errno(env, err, "io_uring_setup", what);
}

/* An integral double in [0, max]. */
static bool field_ok(double d, double max) {
  return d >= 0 && d <= max && d == (double)(uint64_t)d;
}

/* Fills one SQE from staged operation i; returns NULL or the reason it is refused. */
static const char *prep(uring *r, uint32_t i, struct io_uring_sqe *sqe) {
  const double *s = r->sub + (size_t)i * SUBMIT_FIELDS;
  if (!field_ok(s[0], OP_NOP) || !field_ok(s[1], INT_MAX) || !field_ok(s[4], 9007199254740991.0) ||
      !field_ok(s[5], 9007199254740991.0))
    return "malformed operation";
  int op = (int)s[0];
  memset(sqe, 0, sizeof *sqe);
  sqe->fd = (int)s[1];
  sqe->user_data = (uint64_t)s[5];
  if (op == OP_NOP) {
    sqe->opcode = IORING_OP_NOP;
    return NULL;
  }
  if (op == OP_FSYNC || op == OP_FDATASYNC) {
    sqe->opcode = IORING_OP_FSYNC;
    sqe->fsync_flags = op == OP_FDATASYNC ? IORING_FSYNC_DATASYNC : 0;
    return NULL;
  }
  if (!field_ok(s[2], r->iov_cap) || !field_ok(s[3], MAX_IOVS_PER_OP) || s[3] < 1 || s[2] + s[3] > r->iov_cap)
    return "iovec range outside the iovec table";
  uint32_t first = (uint32_t)s[2], count = (uint32_t)s[3];
  host_iov_status st = host_iovecs(r->inst, r->iov + 2 * (size_t)first, count, &r->kiov[first]);
  if (st != HOST_IOV_OK) return host_iov_reason(st);
  sqe->opcode = op == OP_READ ? IORING_OP_READV : IORING_OP_WRITEV;
  sqe->addr = (uint64_t)(uintptr_t)&r->kiov[first];
  sqe->len = count;
  sqe->off = (uint64_t)s[4];
  return NULL;
}

/* uringSubmit(handle, count) -> submitted. Operations [0, count) of the staging
 * array are checked (all of them before any is queued), queued and submitted
 * with one io_uring_enter. A refused operation throws EINVAL naming its index
 * and nothing is submitted; a kernel refusal (EAGAIN, EBUSY) submits a prefix,
 * whose length is returned (the rest was never seen by the kernel). */
static napi_value js_submit(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  uring *r = get_uring(env, argv[0]);
  int64_t count;
  if (r == NULL || !arg_int(env, argv[1], 0, r->sub_cap, &count, "count")) return NULL;
  if (count == 0) return ret_i32(env, 0);
  if (r->inflight + (uint64_t)count > r->cq_entries)
    return throw_errno(env, EBUSY, "io_uring_enter", "more operations in flight than completion entries");
  unsigned head = atomic_load_explicit(r->sq_head, memory_order_acquire);
  unsigned tail = atomic_load_explicit(r->sq_tail, memory_order_relaxed);
  if ((unsigned)count > r->sq_entries - (tail - head))
    return throw_errno(env, EBUSY, "io_uring_enter", "submission ring full");
  for (uint32_t i = 0; i < (uint32_t)count; i++) {
    unsigned idx = (tail + i) & *r->sq_mask;
    const char *why = prep(r, i, &r->sqes[idx]);
    if (why != NULL) {
      char detail[96];
      snprintf(detail, sizeof detail, "operation %u: %s", i, why);
      return throw_errno(env, EINVAL, "io_uring_enter", detail);
    }
    r->sq_array[idx] = idx;
  }
  atomic_store_explicit(r->sq_tail, tail + (unsigned)count, memory_order_release);
  unsigned done = 0;
  int err = 0;
  while (done < (unsigned)count) {
    int n = sys_enter(r->fd, (unsigned)count - done, 0, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      err = errno;
      break;
    }
    if (n == 0) break;
    done += (unsigned)n;
  }
  if (done < (unsigned)count) {
    /* Without SQPOLL only io_uring_enter consumes SQEs: the unconsumed tail is withdrawn. */
    atomic_store_explicit(r->sq_tail, atomic_load_explicit(r->sq_head, memory_order_acquire), memory_order_release);
    if (done == 0 && err != 0) return throw_errno(env, err, "io_uring_enter", NULL);
  }
  r->inflight += done;
  return ret_i32(env, (int32_t)done);
}

/* uringReap(handle) -> n: clears the eventfd if the ring has one (a ring without one is polled on
 * its own fd, which reaping itself quiets), then moves up to the completion array's capacity of
 * CQEs into it as [user data, result] pairs. */
static napi_value js_reap(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  uring *r = get_uring(env, argv[0]);
  if (r == NULL) return NULL;
  if (r->efd >= 0) {
    /* Cleared before the CQ is read: a completion posted after this read signals again. */
    uint64_t ticks;
    ssize_t rd;
    do rd = read(r->efd, &ticks, sizeof ticks); while (rd < 0 && errno == EINTR);
    (void)rd; /* EAGAIN: nothing signalled since the last reap */
  }
  unsigned head = atomic_load_explicit(r->cq_head, memory_order_relaxed);
  unsigned tail = atomic_load_explicit(r->cq_tail, memory_order_acquire);
  uint32_t n = 0;
  while (head != tail && n < r->comp_cap) {
    const struct io_uring_cqe *c = &r->cqes[head & *r->cq_mask];
    r->comp[2 * (size_t)n] = (double)c->user_data;
    r->comp[2 * (size_t)n + 1] = (double)c->res;
    head++;
    n++;
  }
  atomic_store_explicit(r->cq_head, head, memory_order_release);
  r->inflight -= n > r->inflight ? r->inflight : n;
  return ret_i32(env, (int32_t)n);
}

/* uringReady(handle) -> completions waiting in the CQ (no syscall: a poller's cheap check). */
static napi_value js_ready(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  uring *r = get_uring(env, argv[0]);
  if (r == NULL) return NULL;
  unsigned head = atomic_load_explicit(r->cq_head, memory_order_relaxed);
  unsigned tail = atomic_load_explicit(r->cq_tail, memory_order_acquire);
  return ret_i32(env, (int32_t)(tail - head));
}

/* uringFd(handle) -> the ring's fd (pollable: readable while the CQ holds completions). */
static napi_value js_ring_fd(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  uring *r = get_uring(env, argv[0]);
  if (r == NULL) return NULL;
  return ret_i32(env, r->fd);
}

/* uringInFlight(handle) -> operations submitted and not reaped. */
static napi_value js_inflight(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  uring *r = get_uring(env, argv[0]);
  if (r == NULL) return NULL;
  return ret_f64(env, (double)r->inflight);
}

/* uringClose(handle): waits for operations in flight, then releases the ring. */
static napi_value js_close(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  napi_valuetype t;
  void *data = NULL;
  bool tagged = false;
  if (napi_typeof(env, argv[0], &t) != napi_ok || t != napi_external ||
      napi_check_object_type_tag(env, argv[0], &uring_tag, &tagged) != napi_ok || !tagged ||
      napi_get_value_external(env, argv[0], &data) != napi_ok || data == NULL)
    return throw_type(env, "expected an io_uring handle");
  uring *r = data;
  if (!r->closed) {
    ring_release(r);
    napi_remove_env_cleanup_hook(env, env_cleanup, r);
  }
  return ret_undefined(env);
}

void uring_register(napi_env env, napi_value exports) {
  static const export_fn fns[] = {
      {"uringSetup", js_setup}, {"uringSubmit", js_submit}, {"uringReap", js_reap}, {"uringReady", js_ready}, {"uringFd", js_ring_fd},
      {"uringInFlight", js_inflight}, {"uringClose", js_close},
  };
  register_fns(env, exports, fns, sizeof fns / sizeof fns[0]);
}
