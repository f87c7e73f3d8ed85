/*
 * SIGBUS guard for shared file mappings whose file a front-end may shrink.
 *
 * A MAP_SHARED mapping of a file raises SIGBUS on access to any page past
 * the file's current end. The size is checked before mmap (mem.c), but an
 * untrusted front-end can ftruncate() the file afterwards; without this
 * guard the first ring access past the new end kills the whole daemon.
 *
 * Design:
 * - A fixed table of slots (no allocation, no locks) lists the guarded
 *   ranges. A slot is published with a release store of state = ACTIVE and
 *   retired by setting state = RETIRING and waiting until no handler
 *   invocation uses it (`users`), so the handler never reads a slot that is
 *   being rewritten. All fields the handler touches are lock-free atomics.
 * - The handler (SA_SIGINFO | SA_ONSTACK, process-wide, installed once) only
 *   acts on kernel-generated faults (si_code > 0) whose si_addr lies in an
 *   ACTIVE slot: it maps an anonymous zero page (the slot's page size, i.e.
 *   the huge page size on hugetlbfs, since a hugetlb VMA can only be split
 *   at huge-page boundaries) over the faulting page with MAP_FIXED, counts
 *   the fault in the slot, and write()s the notification eventfd. mmap and
 *   write are async-signal-safe. The instruction is then restarted and reads
 *   zeroes; writes land in the private page and are lost, which is fine
 *   because the owner is told to drop the mapping.
 * - Any other SIGBUS goes to the previous disposition: a SA_SIGINFO or plain
 *   handler is called, SIG_DFL/SIG_IGN is restored and the fault re-executed
 *   (or the signal re-raised for a sent one), so real bugs still crash.
 * - The handler is installed when the addon loads. A SIGBUS handler installed
 *   before that (e.g. process.on('SIGBUS')) is chained to; one installed
 *   after it replaces the guard, so do not listen for SIGBUS in a daemon.
 * - Worker threads share the address space and therefore the table; their
 *   faults are handled on their own stack and notified through the same
 *   eventfd, which the subscribing thread (the daemon's main thread) watches.
 */
#include "addon.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#define GUARD_SLOTS 1024

enum { SLOT_FREE = 0, SLOT_CLAIMED = 1, SLOT_ACTIVE = 2, SLOT_RETIRING = 3 };

typedef struct guard_slot {
  atomic_int state;
  atomic_int users;         /* handler invocations currently reading this slot */
  atomic_uintptr_t start, end;
  atomic_uintptr_t page;    /* replacement granularity (power of two) */
  atomic_uint id;
  atomic_ulong faults;      /* pages replaced so far */
  atomic_uintptr_t first;   /* address of the first fault */
  atomic_int pending;       /* faults not yet reported to JS */
} guard_slot;

static guard_slot slots[GUARD_SLOTS];
static atomic_int notify_fd = -1;
static struct sigaction previous;
static pthread_once_t install_once = PTHREAD_ONCE_INIT;
static int install_error;

_Static_assert(ATOMIC_INT_LOCK_FREE == 2 && ATOMIC_LONG_LOCK_FREE == 2 && ATOMIC_POINTER_LOCK_FREE == 2,
               "the signal handler needs lock-free atomics");

static void chain(int sig, siginfo_t *si, void *uc) {
  if (previous.sa_flags & SA_SIGINFO) {
    if (previous.sa_sigaction != NULL) {
      previous.sa_sigaction(sig, si, uc);
      return;
    }
  } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
    previous.sa_handler(sig);
    return;
  }
  /* Default (or ignored, which cannot stop a real fault): die with SIGBUS. */
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(sig, &dfl, NULL);
  if (si->si_code <= 0) raise(sig); /* sent signal: delivered when the handler returns */
  /* kernel fault: returning re-executes the access, now with the default action */
}

static bool try_recover(guard_slot *s, uintptr_t addr) {
  if (atomic_load_explicit(&s->state, memory_order_acquire) != SLOT_ACTIVE) return false;
  atomic_fetch_add(&s->users, 1);
  bool ok = false;
  if (atomic_load_explicit(&s->state, memory_order_acquire) == SLOT_ACTIVE &&
      addr >= atomic_load(&s->start) && addr < atomic_load(&s->end)) {
    uintptr_t page = atomic_load(&s->page);
    uintptr_t p = addr & ~(page - 1);
    if (p < atomic_load(&s->start)) p = atomic_load(&s->start);
    void *r = mmap((void *)p, page, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r != MAP_FAILED) {
      if (atomic_fetch_add(&s->faults, 1) == 0) atomic_store(&s->first, addr);
      atomic_store_explicit(&s->pending, 1, memory_order_release);
      ok = true;
    }
  }
  atomic_fetch_sub(&s->users, 1);
  return ok;
}

static void on_sigbus(int sig, siginfo_t *si, void *uc) {
  int saved_errno = errno;
  if (si != NULL && si->si_code > 0) {
    uintptr_t addr = (uintptr_t)si->si_addr;
    for (int i = 0; i < GUARD_SLOTS; i++) {
      if (try_recover(&slots[i], addr)) {
        int fd = atomic_load(&notify_fd);
        uint64_t one = 1;
        if (fd >= 0) (void)!write(fd, &one, sizeof one); /* EAGAIN at counter max: a wake-up is pending anyway */
        errno = saved_errno;
        return;
      }
    }
  }
  errno = saved_errno;
  chain(sig, si, uc);
}

static void install(void) {
  int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) {
    install_error = errno;
    return;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_sigbus;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGBUS, &sa, &previous) < 0) {
    install_error = errno;
    close(fd);
    return;
  }
  atomic_store(&notify_fd, fd);
}

int guard_install(void) {
  pthread_once(&install_once, install);
  return install_error;
}

int guard_register(void *addr, size_t len, size_t page, uint32_t id) {
  int err = guard_install();
  if (err != 0) return -err;
  for (int i = 0; i < GUARD_SLOTS; i++) {
    guard_slot *s = &slots[i];
    int expected = SLOT_FREE;
    if (!atomic_compare_exchange_strong(&s->state, &expected, SLOT_CLAIMED)) continue;
    atomic_store(&s->start, (uintptr_t)addr);
    atomic_store(&s->end, (uintptr_t)addr + len);
    atomic_store(&s->page, (uintptr_t)page);
    atomic_store(&s->id, id);
    atomic_store(&s->faults, 0);
    atomic_store(&s->first, 0);
    atomic_store(&s->pending, 0);
    atomic_store_explicit(&s->state, SLOT_ACTIVE, memory_order_release);
    return i;
  }
  return -ENOSPC;
}

/* Must run before the range is unmapped: afterwards no fault in the range is
 * recovered (an access after munmap is a SIGSEGV bug, not a shrunk file). */
void guard_unregister(int slot) {
  if (slot < 0 || slot >= GUARD_SLOTS) return;
  guard_slot *s = &slots[slot];
  atomic_store_explicit(&s->state, SLOT_RETIRING, memory_order_release);
  while (atomic_load(&s->users) != 0) sched_yield();
  atomic_store_explicit(&s->state, SLOT_FREE, memory_order_release);
}

/* memoryFaultFd() -> the eventfd written by the handler (installs it). The fd
 * belongs to the addon for the life of the process: never close it. */
static napi_value js_memory_fault_fd(napi_env env, napi_callback_info info) {
  int err = guard_install();
  if (err != 0) return throw_errno(env, err, "sigaction(SIGBUS)", NULL);
  return ret_i32(env, atomic_load(&notify_fd));
}

/* takeMemoryFaults() -> [[mappingId, firstAddress(bigint), pages], ...] for
 * every guarded mapping with faults not reported yet. */
static napi_value js_take_memory_faults(napi_env env, napi_callback_info info) {
  napi_value arr;
  napi_create_array(env, &arr);
  uint32_t n = 0;
  for (int i = 0; i < GUARD_SLOTS; i++) {
    guard_slot *s = &slots[i];
    if (atomic_load(&s->state) != SLOT_ACTIVE) continue;
    if (atomic_exchange_explicit(&s->pending, 0, memory_order_acquire) == 0) continue;
    napi_value rec, v;
    napi_create_array_with_length(env, 3, &rec);
    napi_create_uint32(env, atomic_load(&s->id), &v);
    napi_set_element(env, rec, 0, v);
    napi_create_bigint_uint64(env, (uint64_t)atomic_load(&s->first), &v);
    napi_set_element(env, rec, 1, v);
    napi_create_double(env, (double)atomic_load(&s->faults), &v);
    napi_set_element(env, rec, 2, v);
    napi_set_element(env, arr, n++, rec);
  }
  return arr;
}

void guard_register_fns(napi_env env, napi_value exports) {
  static const export_fn fns[] = {
      {"memoryFaultFd", js_memory_fault_fd},
      {"takeMemoryFaults", js_take_memory_faults},
  };
  register_fns(env, exports, fns, sizeof fns / sizeof fns[0]);
}
