// Signals and the vDSO, one scenario per argument; each prints what it saw.
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

static volatile sig_atomic_t hits;
static volatile int seen_signo, seen_code, seen_pid;
static volatile uintptr_t seen_addr, seen_rip, seen_local;
static sigjmp_buf jump;

static void on_count(int sig) { (void)sig; hits++; }

static void on_info(int sig, siginfo_t *si, void *ctx)
{
    (void)ctx;
    hits++;
    seen_signo = si->si_signo;
    seen_code = si->si_code;
    seen_pid = si->si_pid;
    (void)sig;
}

static void on_fault(int sig, siginfo_t *si, void *ctx)
{
    ucontext_t *uc = ctx;
    seen_signo = sig;
    seen_code = si->si_code;
    seen_addr = (uintptr_t)si->si_addr;
    seen_rip = (uintptr_t)uc->uc_mcontext.gregs[REG_RIP];
    siglongjmp(jump, 1);
}

static void install(int sig, void (*h)(int, siginfo_t *, void *), int flags)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = h;
    sa.sa_flags = SA_SIGINFO | flags;
    sigemptyset(&sa.sa_mask);
    if (sigaction(sig, &sa, NULL) != 0) { perror("sigaction"); exit(90); }
}

static int alarm_pause(void)
{
    signal(SIGALRM, on_count);
    alarm(1);
    int r = pause();
    printf("pause=%d eintr=%d hits=%d\n", r, errno == EINTR, (int)hits);
    return 0;
}

static volatile long third_interval = -1;

static void on_tick_third(int sig)
{
    (void)sig;
    if (hits >= 3)
    {
        // A tick that came due while the third handler ran (SIGALRM is blocked in its own handler) is delivered
        // after it returns, although the timer is off by then: it is not one of the three counted.
        return;
    }

    if (++hits == 3)
    {
        // Read and disarm in the handler that ends the count: a slow run must not see a fourth tick.
        struct itimerval cur;
        getitimer(ITIMER_REAL, &cur);
        third_interval = (long)cur.it_interval.tv_usec;
        struct itimerval off = { { 0, 0 }, { 0, 0 } };
        setitimer(ITIMER_REAL, &off, NULL);
    }
}

static int itimer(void)
{
    signal(SIGALRM, on_tick_third);
    struct itimerval it = { { 0, 20000 }, { 0, 20000 } };
    if (setitimer(ITIMER_REAL, &it, NULL) != 0) { perror("setitimer"); return 1; }
    while (hits < 3) pause();
    struct itimerval cur = { { 0, third_interval }, { 0, 0 } };
    printf("hits=%d interval=%ld\n", (int)hits, (long)cur.it_interval.tv_usec);
    return 0;
}

static int segv(void)
{
    install(SIGSEGV, on_fault, 0);
    if (sigsetjmp(jump, 1) == 0) {
        *(volatile int *)0x10 = 1;
        puts("not reached");
        return 1;
    }
    printf("segv signo=%d code=%d addr=%#lx rip_set=%d\n", seen_signo, seen_code, (unsigned long)seen_addr, seen_rip != 0);
    // Twice: siglongjmp restored the mask, so the handler runs again.
    if (sigsetjmp(jump, 1) == 0) {
        *(volatile int *)0x20 = 1;
        return 1;
    }
    printf("again addr=%#lx\n", (unsigned long)seen_addr);
    return 0;
}

static int fpe(void)
{
    install(SIGFPE, on_fault, 0);
    volatile int zero = 0, one = 1;
    if (sigsetjmp(jump, 1) == 0) {
        printf("%d\n", one / zero);
        return 1;
    }
    printf("fpe signo=%d code=%d addr_is_rip=%d\n", seen_signo, seen_code, seen_addr == seen_rip);
    return 0;
}

static int raise_kill(void)
{
    install(SIGUSR1, on_info, 0);
    install(SIGUSR2, on_info, 0);
    raise(SIGUSR1);
    printf("raise hits=%d signo=%d code=%d pid_ok=%d\n", (int)hits, seen_signo, seen_code, seen_pid == getpid());
    kill(getpid(), SIGUSR2);
    printf("kill hits=%d signo=%d code=%d pid_ok=%d\n", (int)hits, seen_signo, seen_code, seen_pid == getpid());
    return 0;
}

static char altbuf[65536];

static void on_alt(int sig)
{
    int local;
    (void)sig;
    seen_local = (uintptr_t)&local;
    stack_t cur;
    sigaltstack(NULL, &cur);
    hits++;
}

static int altstack(void)
{
    stack_t ss = { .ss_sp = altbuf, .ss_size = sizeof altbuf, .ss_flags = 0 };
    if (sigaltstack(&ss, NULL) != 0) { perror("sigaltstack"); return 1; }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alt;
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGUSR1, &sa, NULL);
    raise(SIGUSR1);
    int on = seen_local >= (uintptr_t)altbuf && seen_local < (uintptr_t)altbuf + sizeof altbuf;
    sa.sa_flags = 0;
    sigaction(SIGUSR1, &sa, NULL);
    raise(SIGUSR1);
    int off = !(seen_local >= (uintptr_t)altbuf && seen_local < (uintptr_t)altbuf + sizeof altbuf);
    printf("onstack=%d offstack=%d hits=%d\n", on, off, (int)hits);
    return 0;
}

static int pending(void)
{
    install(SIGUSR1, on_info, 0);
    sigset_t set, got;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    raise(SIGUSR1);
    int before = hits;
    sigpending(&got);
    int is_pending = sigismember(&got, SIGUSR1);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    printf("before=%d pending=%d after=%d\n", before, is_pending, (int)hits);
    return 0;
}

static int term(void)
{
    puts("terminating");
    fflush(stdout);
    kill(getpid(), SIGTERM);
    puts("not reached");
    return 0;
}

static void on_forge(int sig, siginfo_t *si, void *ctx)
{
    ucontext_t *uc = ctx;
    (void)sig; (void)si;
    // Try to come back at CPL 0 with IOPL 3, NT and VM set: the kernel selectors and privileged flags must be refused.
    uc->uc_mcontext.gregs[REG_CSGSFS] = (uc->uc_mcontext.gregs[REG_CSGSFS] & ~0xffffL) | 0x08;
    uc->uc_mcontext.gregs[REG_EFL] |= 0x3000 | 0x4000 | 0x20000 | 0x100000;
    uc->uc_mcontext.gregs[REG_EFL] &= ~0x200L;
    hits++;
}

static int forge(void)
{
    install(SIGUSR1, on_forge, 0);
    raise(SIGUSR1);
    unsigned short cs;
    unsigned long flags;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    __asm__ volatile("pushfq; popq %0" : "=r"(flags));
    printf("hits=%d cpl=%d iopl=%lu nt=%lu vm=%lu if=%lu\n", (int)hits, cs & 3, (flags >> 12) & 3, (flags >> 14) & 1, (flags >> 17) & 1, (flags >> 9) & 1);
    return 0;
}

static int forge_rip(void)
{
    // A frame made from nothing, its RIP in the kernel half: rt_sigreturn must end the program with SIGSEGV.
    static ucontext_t uc;
    memset(&uc, 0, sizeof uc);
    uc.uc_mcontext.gregs[REG_RIP] = (long)0xffffffff80003000UL;
    uc.uc_mcontext.gregs[REG_RSP] = (long)(uintptr_t)&uc;
    uc.uc_mcontext.gregs[REG_CSGSFS] = 0x08;
    puts("forging");
    fflush(stdout);
    __asm__ volatile("mov %0, %%rsp; mov $15, %%eax; syscall" : : "r"(&uc) : "memory", "rax");
    puts("not reached");
    return 0;
}

static int forge_mxcsr(void)
{
    static ucontext_t uc;
    static char fx[512] __attribute__((aligned(64)));
    memset(&uc, 0, sizeof uc);
    uint32_t bad = 0xffff1f80u;
    memcpy(fx + 24, &bad, 4);
    uc.uc_mcontext.gregs[REG_RIP] = (long)(uintptr_t)&forge_mxcsr;
    uc.uc_mcontext.gregs[REG_RSP] = (long)(uintptr_t)&uc;
    uc.uc_mcontext.fpregs = (void *)fx;
    puts("forging");
    fflush(stdout);
    __asm__ volatile("mov %0, %%rsp; mov $15, %%eax; syscall" : : "r"(&uc) : "memory", "rax");
    puts("not reached");
    return 0;
}

static int sleep_eintr(void)
{
    signal(SIGALRM, on_count);
    alarm(1);
    struct timespec req = { 5, 0 }, rem = { 0, 0 };
    int r = nanosleep(&req, &rem);
    printf("nanosleep=%d eintr=%d rem_ok=%d hits=%d\n", r, errno == EINTR, rem.tv_sec >= 3 && rem.tv_sec <= 4, (int)hits);
    return 0;
}

static int suspend(void)
{
    signal(SIGALRM, on_count);
    sigset_t block, empty, now;
    sigemptyset(&block);
    sigaddset(&block, SIGALRM);
    sigprocmask(SIG_BLOCK, &block, NULL);
    alarm(1);
    sigemptyset(&empty);
    int r = sigsuspend(&empty);
    sigprocmask(SIG_BLOCK, NULL, &now);
    printf("sigsuspend=%d eintr=%d hits=%d still_blocked=%d\n", r, errno == EINTR, (int)hits, sigismember(&now, SIGALRM));
    return 0;
}

static int resethand(void)
{
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_count;
    sa.sa_flags = SA_RESETHAND | SA_NODEFER;
    sigaction(SIGUSR1, &sa, NULL);
    raise(SIGUSR1);
    sigaction(SIGUSR1, NULL, &old);
    printf("hits=%d reset=%d\n", (int)hits, old.sa_handler == SIG_DFL);
    return 0;
}

/// Finds a symbol of the given version in the vDSO by its ELF tables, as a loader would.
static void *vdso_sym(const char *name, const char *version)
{
    uintptr_t base = getauxval(AT_SYSINFO_EHDR);
    if (!base) return NULL;
    Elf64_Ehdr *eh = (Elf64_Ehdr *)base;
    Elf64_Phdr *ph = (Elf64_Phdr *)(base + eh->e_phoff);
    uintptr_t bias = 0;
    Elf64_Dyn *dyn = NULL;
    for (int i = 0; i < eh->e_phnum; i++) {
        if (ph[i].p_type == PT_LOAD) bias = base + ph[i].p_offset - ph[i].p_vaddr;
        if (ph[i].p_type == PT_DYNAMIC) dyn = (Elf64_Dyn *)(base + ph[i].p_offset);
    }
    if (!dyn) return NULL;
    Elf64_Sym *syms = NULL; const char *strs = NULL; Elf32_Word *hash = NULL; Elf64_Versym *versym = NULL; Elf64_Verdef *verdef = NULL;
    for (; dyn->d_tag != DT_NULL; dyn++) {
        switch (dyn->d_tag) {
        case DT_SYMTAB: syms = (Elf64_Sym *)(bias + dyn->d_un.d_ptr); break;
        case DT_STRTAB: strs = (const char *)(bias + dyn->d_un.d_ptr); break;
        case DT_HASH: hash = (Elf32_Word *)(bias + dyn->d_un.d_ptr); break;
        case DT_VERSYM: versym = (Elf64_Versym *)(bias + dyn->d_un.d_ptr); break;
        case DT_VERDEF: verdef = (Elf64_Verdef *)(bias + dyn->d_un.d_ptr); break;
        }
    }
    if (!syms || !strs || !hash || !versym || !verdef) return NULL;
    for (Elf32_Word i = 1; i < hash[1]; i++) {
        if (strcmp(strs + syms[i].st_name, name) != 0) continue;
        for (Elf64_Verdef *d = verdef;; d = (Elf64_Verdef *)((char *)d + d->vd_next)) {
            Elf64_Verdaux *aux = (Elf64_Verdaux *)((char *)d + d->vd_aux);
            if (d->vd_ndx == (versym[i] & 0x7fff) && strcmp(strs + aux->vda_name, version) == 0)
                return (void *)(bias + syms[i].st_value);
            if (!d->vd_next) break;
        }
    }
    return NULL;
}

static int vdso(void)
{
    int (*gettime)(clockid_t, struct timespec *) = vdso_sym("__vdso_clock_gettime", "LINUX_2.6");
    int (*gtod)(struct timeval *, void *) = vdso_sym("__vdso_gettimeofday", "LINUX_2.6");
    long (*vtime)(long *) = vdso_sym("__vdso_time", "LINUX_2.6");
    int (*getcpu)(unsigned *, unsigned *, void *) = vdso_sym("__vdso_getcpu", "LINUX_2.6");
    if (!gettime || !gtod || !vtime || !getcpu) { printf("missing symbol\n"); return 1; }
    struct timespec a, b;
    int r = gettime(CLOCK_REALTIME, &a);
    clock_gettime(CLOCK_REALTIME, &b);
    struct timeval tv;
    gtod(&tv, NULL);
    long t = vtime(NULL);
    unsigned cpu = 7, node = 7;
    int g = getcpu(&cpu, &node, NULL);
    int close_enough = r == 0 && labs(b.tv_sec - a.tv_sec) < 60 && labs(tv.tv_sec - a.tv_sec) < 60 && labs(t - a.tv_sec) < 60;
    int bad = gettime(12345, &a);
    // sched_getcpu in static glibc goes through the vDSO: many calls, few system calls.
    int fails = 0;
    for (int i = 0; i < 1000; i++) fails += sched_getcpu() < 0;
    printf("clock=%d getcpu=%d cpu_ok=%d einval=%d fails=%d\n", close_enough, g, cpu < 4096 && node < 4096, bad == -EINVAL, fails);
    return 0;
}

static int write_fd;

static void on_tick_write(int sig)
{
    (void)sig;
    if (hits >= 2)
    {
        // Came due while the second handler ran (blocked there), delivered after the timer was turned off.
        return;
    }

    if (++hits == 2)
    {
        // Disarm here, not after read returns: a slow run must not see a third tick, whatever the host's timing.
        struct itimerval off = { { 0, 0 }, { 0, 0 } };
        setitimer(ITIMER_REAL, &off, NULL);
        write(write_fd, "x", 1);
    }
}

static int restart(void)
{
    int p[2];
    char c;
    if (pipe(p) != 0) return 1;
    write_fd = p[1];
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_tick_write;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = { { 0, 10000 }, { 0, 10000 } };
    setitimer(ITIMER_REAL, &it, NULL);
    // Interrupted twice; SA_RESTART makes the read again each time, and the second handler gives it a byte.
    ssize_t n1 = read(p[0], &c, 1);
    struct itimerval off = { { 0, 0 }, { 0, 0 } };
    setitimer(ITIMER_REAL, &off, NULL);
    int hits1 = hits;
    sa.sa_flags = 0;
    sa.sa_handler = on_count;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval once = { { 0, 0 }, { 0, 10000 } };
    setitimer(ITIMER_REAL, &once, NULL);
    ssize_t n2 = read(p[0], &c, 1);
    printf("restart read=%zd hits=%d; plain read=%zd eintr=%d\n", n1, hits1, n2, errno == EINTR);
    return 0;
}

static void on_child(int sig, siginfo_t *si, void *ctx)
{
    (void)sig; (void)ctx;
    hits++;
    seen_code = si->si_code;
    seen_pid = si->si_pid;
    seen_signo = si->si_status;
}

static int sigchld(void)
{
    install(SIGCHLD, on_child, SA_RESTART);
    pid_t pid = fork();
    if (pid == 0) _exit(3);
    int status = 0;
    pid_t w;
    while ((w = waitpid(pid, &status, 0)) < 0 && errno == EINTR) {}
    printf("sigchld waited=%d status=%d hits=%d code=%d pid_ok=%d si_status=%d\n", w == pid, WEXITSTATUS(status), (int)hits, seen_code, seen_pid == pid, seen_signo);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) return 2;
    const char *m = argv[1];
    if (!strcmp(m, "alarm")) return alarm_pause();
    if (!strcmp(m, "itimer")) return itimer();
    if (!strcmp(m, "segv")) return segv();
    if (!strcmp(m, "fpe")) return fpe();
    if (!strcmp(m, "raise")) return raise_kill();
    if (!strcmp(m, "altstack")) return altstack();
    if (!strcmp(m, "pending")) return pending();
    if (!strcmp(m, "term")) return term();
    if (!strcmp(m, "forge")) return forge();
    if (!strcmp(m, "forge-rip")) return forge_rip();
    if (!strcmp(m, "forge-mxcsr")) return forge_mxcsr();
    if (!strcmp(m, "sleep")) return sleep_eintr();
    if (!strcmp(m, "suspend")) return suspend();
    if (!strcmp(m, "resethand")) return resethand();
    if (!strcmp(m, "vdso")) return vdso();
    if (!strcmp(m, "restart")) return restart();
    if (!strcmp(m, "sigchld")) return sigchld();
    return 2;
}
