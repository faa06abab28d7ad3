// Queued real-time signals, rt_sigtimedwait, signalfd, and sleeps that signals interrupt. Prints only what must be the
// same on Linux and in the sandbox (no times, pids or addresses).
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int order[16];
static int values[16];
static volatile int handled;

static void on_rt(int sig, siginfo_t *si, void *ctx)
{
    (void)ctx;
    if (handled < 16)
    {
        order[handled] = sig;
        values[handled] = si->si_value.sival_int;
    }
    handled++;
}

static void on_alarm(int sig) { (void)sig; }

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void block(int sig)
{
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, sig);
    sigprocmask(SIG_BLOCK, &s, NULL);
}

static void queue_then_wait(void)
{
    int rt = SIGRTMIN + 1;
    block(rt);
    block(SIGUSR1);
    for (int i = 0; i < 5; i++)
    {
        union sigval v = { .sival_int = 100 + i };
        if (sigqueue(getpid(), rt, v) != 0)
            printf("sigqueue failed: %s\n", strerror(errno));
    }
    union sigval u = { .sival_int = 7 };
    sigqueue(getpid(), SIGUSR1, u);
    sigqueue(getpid(), SIGUSR1, u);

    sigset_t pending;
    sigpending(&pending);
    printf("pending: rt=%d usr1=%d usr2=%d\n", sigismember(&pending, rt), sigismember(&pending, SIGUSR1), sigismember(&pending, SIGUSR2));

    sigset_t want;
    sigemptyset(&want);
    sigaddset(&want, rt);
    sigaddset(&want, SIGUSR1);
    struct timespec zero = { 0, 0 };
    for (;;)
    {
        siginfo_t si;
        int s = sigtimedwait(&want, &si, &zero);
        if (s < 0)
        {
            printf("sigtimedwait: %s\n", errno == EAGAIN ? "EAGAIN" : strerror(errno));
            break;
        }
        printf("took %s code=%s value=%d own-pid=%d\n", s == SIGUSR1 ? "SIGUSR1" : s == rt ? "SIGRTMIN+1" : "other",
               si.si_code == SI_QUEUE ? "SI_QUEUE" : "other", si.si_value.sival_int, si.si_pid == getpid());
    }
}

static void queue_then_handle(void)
{
    int a = SIGRTMIN + 2, b = SIGRTMIN + 3;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_rt;
    sa.sa_flags = SA_SIGINFO;
    sigaction(a, &sa, NULL);
    sigaction(b, &sa, NULL);
    sigset_t s, old;
    sigemptyset(&s);
    sigaddset(&s, a);
    sigaddset(&s, b);
    sigprocmask(SIG_BLOCK, &s, &old);
    union sigval v;
    v.sival_int = 1; sigqueue(getpid(), b, v);
    v.sival_int = 2; sigqueue(getpid(), a, v);
    v.sival_int = 3; sigqueue(getpid(), b, v);
    v.sival_int = 4; sigqueue(getpid(), a, v);
    printf("handled while blocked: %d\n", handled);
    sigprocmask(SIG_UNBLOCK, &s, NULL);
    printf("handled after unblock: %d\n", handled);
    for (int i = 0; i < handled && i < 16; i++)
        printf("  %d: SIGRTMIN+%d value %d\n", i, order[i] - SIGRTMIN, values[i]);
}

static void timed_wait_times_out(void)
{
    sigset_t want;
    sigemptyset(&want);
    sigaddset(&want, SIGUSR2);
    block(SIGUSR2);
    struct timespec t = { 0, 50 * 1000 * 1000 };
    long long start = now_ns();
    int s = sigtimedwait(&want, NULL, &t);
    long long took = now_ns() - start;
    printf("timed wait: %d %s, waited at least 50 ms: %s\n", s, s < 0 && errno == EAGAIN ? "EAGAIN" : "?", took >= 50000000LL ? "yes" : "no");
}

static void *send_later(void *arg)
{
    pid_t tid = *(pid_t *)arg;
    struct timespec t = { 0, 20 * 1000 * 1000 };
    nanosleep(&t, NULL);
    siginfo_t si;
    memset(&si, 0, sizeof si);
    si.si_signo = SIGRTMIN + 4;
    si.si_code = SI_QUEUE;
    si.si_pid = getpid();
    si.si_uid = getuid();
    si.si_value.sival_int = 4242;
    if (syscall(SYS_rt_tgsigqueueinfo, getpid(), tid, SIGRTMIN + 4, &si) != 0)
        printf("rt_tgsigqueueinfo failed: %s\n", strerror(errno));
    return NULL;
}

static void wait_for_another_thread(void)
{
    block(SIGRTMIN + 4);
    pid_t self = (pid_t)syscall(SYS_gettid);
    pthread_t t;
    pthread_create(&t, NULL, send_later, &self);
    sigset_t want;
    sigemptyset(&want);
    sigaddset(&want, SIGRTMIN + 4);
    siginfo_t si;
    int s = sigwaitinfo(&want, &si);
    pthread_join(t, NULL);
    printf("sigwaitinfo from a thread: SIGRTMIN+%d value %d\n", s - SIGRTMIN, si.si_value.sival_int);
}

static void signalfd_reads(void)
{
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGWINCH);
    sigaddset(&mask, SIGRTMIN + 5);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    struct signalfd_siginfo r[4];
    ssize_t n = read(fd, r, sizeof r);
    printf("signalfd empty: %zd %s\n", n, n < 0 && errno == EAGAIN ? "EAGAIN" : "?");
    struct pollfd p = { .fd = fd, .events = POLLIN };
    printf("poll before: %d\n", poll(&p, 1, 0));
    kill(getpid(), SIGWINCH);
    union sigval v = { .sival_int = 99 };
    sigqueue(getpid(), SIGRTMIN + 5, v);
    sigqueue(getpid(), SIGRTMIN + 5, v);
    printf("poll after: %d revents=%s\n", poll(&p, 1, 0), p.revents & POLLIN ? "POLLIN" : "none");
    n = read(fd, r, sizeof r);
    printf("signalfd read %zd bytes\n", n);
    for (int i = 0; i < n / (ssize_t)sizeof r[0]; i++)
        printf("  signo=%s code=%s pid-ok=%d uid-ok=%d int=%d\n", r[i].ssi_signo == SIGWINCH ? "SIGWINCH" : r[i].ssi_signo == (unsigned)SIGRTMIN + 5 ? "SIGRTMIN+5" : "other",
               r[i].ssi_code == SI_USER ? "SI_USER" : r[i].ssi_code == SI_QUEUE ? "SI_QUEUE" : "other",
               r[i].ssi_pid == (unsigned)getpid(), r[i].ssi_uid == getuid(), r[i].ssi_int);
    close(fd);
}

static void sleeps_are_interrupted(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);

    struct timespec t = { 0, 100 * 1000 * 1000 };
    long long start = now_ns();
    int r = nanosleep(&t, NULL);
    printf("nanosleep 100 ms: %d, slept at least 100 ms: %s\n", r, now_ns() - start >= 100000000LL ? "yes" : "no");

    struct itimerval it = { { 0, 0 }, { 0, 200 * 1000 } };
    setitimer(ITIMER_REAL, &it, NULL);
    struct timespec longer = { 5, 0 }, rem = { 0, 0 };
    r = nanosleep(&longer, &rem);
    printf("nanosleep 5 s with a 200 ms timer: %d %s, remaining between 4 and 5 s: %s\n", r, r < 0 && errno == EINTR ? "EINTR" : "?", rem.tv_sec == 4 ? "yes" : "no");

    setitimer(ITIMER_REAL, &it, NULL);
    rem.tv_sec = 77;
    r = clock_nanosleep(CLOCK_MONOTONIC, 0, &longer, &rem);
    printf("clock_nanosleep relative: %s, remaining set: %s\n", r == EINTR ? "EINTR" : "?", rem.tv_sec == 4 ? "yes" : "no");

    struct timespec at;
    clock_gettime(CLOCK_MONOTONIC, &at);
    at.tv_sec += 5;
    setitimer(ITIMER_REAL, &it, NULL);
    rem.tv_sec = 77;
    r = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, &rem);
    printf("clock_nanosleep absolute: %s, remaining untouched: %s\n", r == EINTR ? "EINTR" : "?", rem.tv_sec == 77 ? "yes" : "no");

    clock_gettime(CLOCK_MONOTONIC, &at);
    at.tv_nsec += 30 * 1000 * 1000;
    if (at.tv_nsec >= 1000000000L)
    {
        at.tv_sec++;
        at.tv_nsec -= 1000000000L;
    }
    r = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL);
    struct timespec after;
    clock_gettime(CLOCK_MONOTONIC, &after);
    printf("clock_nanosleep absolute 30 ms: %d, reached the deadline: %s\n", r,
           after.tv_sec > at.tv_sec || (after.tv_sec == at.tv_sec && after.tv_nsec >= at.tv_nsec) ? "yes" : "no");
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    queue_then_wait();
    queue_then_handle();
    timed_wait_times_out();
    wait_for_another_thread();
    signalfd_reads();
    sleeps_are_interrupted();
    return 0;
}
