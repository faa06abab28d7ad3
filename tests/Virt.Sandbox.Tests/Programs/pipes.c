/* Pipes, dup2, poll, select, eventfd and epoll within one process; prints what it sees. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/select.h>
#include <unistd.h>
#include <fcntl.h>
#include <stdint.h>

int main(void) {
    int p[2];
    if (pipe(p) != 0) { perror("pipe"); return 1; }
    struct pollfd pf = { .fd = p[0], .events = POLLIN };
    printf("poll empty: %d revents=%d\n", poll(&pf, 1, 0), pf.revents);
    write(p[1], "hello pipe\n", 11);
    printf("poll data: %d revents=%d\n", poll(&pf, 1, -1), pf.revents);
    char buf[64] = {0};
    printf("read: %zd %s", read(p[0], buf, sizeof buf), buf);

    /* dup2 the write end onto stdout, print through it, restore. */
    int saved = dup(1);
    dup2(p[1], 1);
    printf("through the pipe\n");
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    memset(buf, 0, sizeof buf);
    ssize_t n = read(p[0], buf, sizeof buf);
    printf("dup2 read: %zd %s", n, buf);

    /* select on the read end with a timeout: nothing there. */
    fd_set rs; FD_ZERO(&rs); FD_SET(p[0], &rs);
    struct timeval tv = { 0, 1000 };
    printf("select empty: %d\n", select(p[0] + 1, &rs, NULL, NULL, &tv));
    write(p[1], "x", 1);
    FD_ZERO(&rs); FD_SET(p[0], &rs);
    printf("select data: %d isset=%d\n", select(p[0] + 1, &rs, NULL, NULL, NULL), FD_ISSET(p[0], &rs) ? 1 : 0);
    read(p[0], buf, 1);

    /* eventfd counter. */
    int e = eventfd(3, EFD_NONBLOCK);
    uint64_t v = 4;
    write(e, &v, 8);
    v = 0;
    printf("eventfd read: %zd value=%llu\n", read(e, &v, 8), (unsigned long long)v);
    printf("eventfd empty: %zd errno=%s\n", read(e, &v, 8), errno == EAGAIN ? "EAGAIN" : "other");

    /* epoll over the pipe and the eventfd. */
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 7 };
    epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev);
    ev.data.u64 = 9;
    epoll_ctl(ep, EPOLL_CTL_ADD, e, &ev);
    struct epoll_event out[4];
    printf("epoll idle: %d\n", epoll_wait(ep, out, 4, 0));
    write(p[1], "yz", 2);
    v = 1; write(e, &v, 8);
    int k = epoll_wait(ep, out, 4, 1000);
    unsigned long long sum = 0;
    for (int i = 0; i < k; i++) sum += out[i].data.u64;
    printf("epoll ready: %d sum=%llu\n", k, sum);
    printf("epoll dup add: %d errno=%s\n", epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev), errno == EEXIST ? "EEXIST" : "other");

    /* Closing the write end: the reader sees the rest, then the end; a writer to a closed reader gets EPIPE. */
    close(p[1]);
    memset(buf, 0, sizeof buf);
    printf("rest: %zd %s\n", read(p[0], buf, sizeof buf), buf);
    printf("eof: %zd\n", read(p[0], buf, sizeof buf));
    pf.events = POLLIN;
    printf("poll hup: %d revents=%d\n", poll(&pf, 1, 0), pf.revents);
    int q[2];
    pipe2(q, O_CLOEXEC);
    close(q[0]);
    signal(SIGPIPE, SIG_IGN);
    printf("epipe: %zd errno=%s\n", write(q[1], "a", 1), errno == EPIPE ? "EPIPE" : "other");
    printf("cloexec: %d\n", fcntl(q[1], F_GETFD));
    return 0;
}
