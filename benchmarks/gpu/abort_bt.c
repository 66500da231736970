// LD_PRELOAD diagnostic (benchmarks/results/gpu/exit-abort-h200.txt): print the native backtrace on SIGABRT or
// SIGSEGV, then run the handler the process installed (Python's faulthandler), which a later library cannot take
// away: sigaction() for these signals is interposed.
// Build: gcc -O1 -g -shared -fPIC -o abort_bt.so benchmarks/gpu/abort_bt.c -ldl   (then LD_PRELOAD=$PWD/abort_bt.so)
#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);
static sigaction_fn real_sigaction;
static struct sigaction next_abrt, next_segv;
static volatile sig_atomic_t in_handler;

static struct sigaction *next_for(int sig) { return sig == SIGABRT ? &next_abrt : sig == SIGSEGV ? &next_segv : 0; }

static void handler(int sig, siginfo_t *info, void *uc) {
  struct sigaction *nx = next_for(sig);
  if (in_handler++) { signal(sig, SIG_DFL); raise(sig); return; }
  char msg[] = "\n[abort_bt] signal N, native backtrace:\n";
  msg[19] = sig == SIGABRT ? 'A' : 'S';
  write(2, msg, sizeof msg - 1);
  void *buf[80];
  int n = backtrace(buf, 80);
  backtrace_symbols_fd(buf, n, 2);
  write(2, "[abort_bt] end\n", 15);
  if (nx && (nx->sa_flags & SA_SIGINFO) && nx->sa_sigaction) nx->sa_sigaction(sig, info, uc);
  else if (nx && nx->sa_handler != SIG_DFL && nx->sa_handler != SIG_IGN && nx->sa_handler) nx->sa_handler(sig);
  struct sigaction dfl; memset(&dfl, 0, sizeof dfl); dfl.sa_handler = SIG_DFL;
  real_sigaction(sig, &dfl, 0);
  raise(sig);
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
  if (!real_sigaction) real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
  struct sigaction *nx = next_for(sig);
  if (!nx) return real_sigaction(sig, act, old);
  if (old) *old = *nx;
  if (act) *nx = *act;
  return 0;
}

__attribute__((constructor)) static void init(void) {
  real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
  void *b[1]; backtrace(b, 1);  // loads libgcc_s now, not inside the handler
  struct sigaction sa; memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = handler; sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  real_sigaction(SIGABRT, &sa, 0);
  real_sigaction(SIGSEGV, &sa, 0);
}
