/*
 * virt-agent: the Virt.Sdk guest agent. Listens on a vsock port and serves one request per connection
 * (the host side is src/Virt.Sdk/Guest/GuestAgent.cs; docs/linux-guests.md describes the protocol).
 *
 *   virt-agent [PORT]          serve on PORT (default 1024); announce readiness by connecting to the
 *                              host (CID 2) on the same port and sending a hello frame
 *   virt-agent connect PORT    copy stdin to the host's PORT, half-close, then copy what comes back
 *                              to stdout (a minimal vsock client for scripts and tests)
 *
 * Frames: a type byte, a little-endian u32 length, that many bytes. Requests:
 *   'H'                        hello: answered with 'H' "virt-agent 1"
 *   'E' argv, env              exec: then 'I' stdin frames (an empty one ends stdin); answers 'O' stdout,
 *                              'R' stderr, and 'X' with the i32 exit status (128+N for signal N)
 *   'P' u32 mode, path         put a file: then 'D' frames (an empty one ends); answers 'K' or 'F' message
 *   'G' path                   get a file: answers 'D' frames, an empty 'D', then 'K'; or 'F' message
 * Strings are NUL-terminated; a string list is a u32 count followed by the strings.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define MAX_PAYLOAD (1u << 20)
#define CHUNK (60 * 1024)

static int write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int read_all(int fd, void *buf, size_t len) {
    char *p = buf;
    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (n == 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int send_frame(int fd, char type, const void *data, uint32_t len) {
    unsigned char h[5] = {(unsigned char)type, len & 0xff, (len >> 8) & 0xff, (len >> 16) & 0xff, (len >> 24) & 0xff};
    if (write_all(fd, h, 5) < 0) return -1;
    return len ? write_all(fd, data, len) : 0;
}

static int send_text(int fd, char type, const char *text) { return send_frame(fd, type, text, (uint32_t)strlen(text)); }

/* Reads a frame; *data is malloc'd (NUL-terminated for convenience). Returns the type, or -1. */
static int recv_frame(int fd, char **data, uint32_t *len) {
    unsigned char h[5];
    if (read_all(fd, h, 5) < 0) return -1;
    *len = h[1] | (h[2] << 8) | (h[3] << 16) | ((uint32_t)h[4] << 24);
    if (*len > MAX_PAYLOAD) return -1;
    *data = malloc(*len + 1);
    if (!*data) return -1;
    if (*len && read_all(fd, *data, *len) < 0) {
        free(*data);
        return -1;
    }
    (*data)[*len] = 0;
    return h[0];
}

static uint32_t get_u32(const char *p) {
    const unsigned char *u = (const unsigned char *)p;
    return u[0] | (u[1] << 8) | (u[2] << 16) | ((uint32_t)u[3] << 24);
}

/* Parses a string list at *p (inside [*p, end)); returns a NULL-terminated array or NULL. */
static char **parse_strings(char **p, char *end) {
    if (end - *p < 4) return NULL;
    uint32_t count = get_u32(*p);
    *p += 4;
    if (count > 65536) return NULL;
    char **list = calloc(count + 1, sizeof(char *));
    if (!list) return NULL;
    for (uint32_t i = 0; i < count; i++) {
        char *nul = memchr(*p, 0, (size_t)(end - *p));
        if (!nul) {
            free(list);
            return NULL;
        }
        list[i] = *p;
        *p = nul + 1;
    }
    return list;
}

static void fail(int sock, const char *what, const char *path) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s %s: %s", what, path, strerror(errno));
    send_text(sock, 'F', msg);
}

/* Forwards one pipe read to the host as a frame; returns 0 at end of file. */
static int forward_output(int sock, int *fd, char type, char *buf) {
    ssize_t n = read(*fd, buf, CHUNK);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return 1;
    if (n <= 0) {
        close(*fd);
        *fd = -1;
        return 0;
    }
    send_frame(sock, type, buf, (uint32_t)n);
    return 1;
}

struct stdin_state {
    int fd;          /* the command's stdin, -1 once closed */
    char *pending;   /* a frame's bytes not yet written */
    uint32_t off, len;
    int host_done;   /* the host ended stdin or went away */
};

/* Takes the next stdin frame from the host. Returns -1 when the host closed the connection. */
static int take_stdin(int sock, struct stdin_state *in) {
    char *data;
    uint32_t len;
    int type = recv_frame(sock, &data, &len);
    if (type < 0) return -1;
    if (type != 'I' || len == 0) {
        free(data);
        in->host_done = 1;
        if (in->fd >= 0) close(in->fd);
        in->fd = -1;
        return 0;
    }
    if (in->fd < 0) {
        free(data);
        return 0;
    }
    in->pending = data;
    in->off = 0;
    in->len = len;
    return 0;
}

static void give_stdin(struct stdin_state *in) {
    ssize_t n = write(in->fd, in->pending + in->off, in->len - in->off);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n < 0) { /* the command closed its stdin: drop the rest */
        close(in->fd);
        in->fd = -1;
        n = in->len - in->off;
    }
    in->off += (uint32_t)n;
    if (in->off == in->len) {
        free(in->pending);
        in->pending = NULL;
    }
}

static pid_t start_child(char **argv, char **env, int in[2], int out[2], int err[2]) {
    pid_t pid = fork();
    if (pid != 0) return pid;
    setpgid(0, 0);
    dup2(in[0], 0);
    dup2(out[1], 1);
    dup2(err[1], 2);
    for (int fd = 3; fd < 1024; fd++) close(fd);
    for (char **e = env; *e; e++) putenv(*e);
    signal(SIGPIPE, SIG_DFL);
    execvp(argv[0], argv);
    fprintf(stderr, "virt-agent: cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

static void do_exec(int sock, char *payload, uint32_t len) {
    char *p = payload, *end = payload + len;
    char **argv = parse_strings(&p, end);
    char **env = argv ? parse_strings(&p, end) : NULL;
    if (!argv || !env || !argv[0]) {
        send_text(sock, 'F', "malformed exec request");
        return;
    }
    int in[2], out[2], err[2];
    if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
        fail(sock, "pipe for", argv[0]);
        return;
    }
    pid_t pid = start_child(argv, env, in, out, err);
    if (pid < 0) {
        fail(sock, "fork for", argv[0]);
        return;
    }
    close(in[0]);
    close(out[1]);
    close(err[1]);
    fcntl(in[1], F_SETFL, O_NONBLOCK);
    struct stdin_state stdin_state = {in[1], NULL, 0, 0, 0};
    int outfd = out[0], errfd = err[0];
    char *buf = malloc(CHUNK);
    while (outfd >= 0 || errfd >= 0) {
        struct pollfd fds[4];
        int nfds = 0, isock = -1, iin = -1, iout = -1, ierr = -1;
        if (!stdin_state.host_done && !stdin_state.pending) { isock = nfds; fds[nfds++] = (struct pollfd){sock, POLLIN, 0}; }
        if (stdin_state.pending && stdin_state.fd >= 0) { iin = nfds; fds[nfds++] = (struct pollfd){stdin_state.fd, POLLOUT, 0}; }
        if (outfd >= 0) { iout = nfds; fds[nfds++] = (struct pollfd){outfd, POLLIN, 0}; }
        if (errfd >= 0) { ierr = nfds; fds[nfds++] = (struct pollfd){errfd, POLLIN, 0}; }
        if (poll(fds, (nfds_t)nfds, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (isock >= 0 && fds[isock].revents && take_stdin(sock, &stdin_state) < 0) {
            kill(-pid, SIGKILL); /* the host went away (a cancelled exec) */
            stdin_state.host_done = 1;
        }
        if (iin >= 0 && fds[iin].revents) give_stdin(&stdin_state);
        if (iout >= 0 && fds[iout].revents) forward_output(sock, &outfd, 'O', buf);
        if (ierr >= 0 && fds[ierr].revents) forward_output(sock, &errfd, 'R', buf);
    }
    free(buf);
    if (stdin_state.fd >= 0) close(stdin_state.fd);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    int32_t code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    unsigned char c[4] = {code & 0xff, (code >> 8) & 0xff, (code >> 16) & 0xff, (code >> 24) & 0xff};
    send_frame(sock, 'X', c, 4);
}

static void do_put(int sock, char *payload, uint32_t len) {
    if (len < 5 || payload[len - 1] != 0) {
        send_text(sock, 'F', "malformed put request");
        return;
    }
    const char *path = payload + 4;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, (mode_t)(get_u32(payload) & 07777));
    int saved = errno;
    const char *what = "open";
    for (;;) {
        char *data;
        uint32_t n;
        int type = recv_frame(sock, &data, &n);
        if (type < 0) {
            if (fd >= 0) close(fd);
            return;
        }
        if (type != 'D' || n == 0) {
            free(data);
            break;
        }
        if (fd >= 0 && write_all(fd, data, n) < 0) {
            saved = errno;
            what = "write";
            close(fd);
            fd = -1;
        }
        free(data);
    }
    if (fd >= 0 && close(fd) == 0) {
        send_frame(sock, 'K', NULL, 0);
        return;
    }
    errno = saved;
    fail(sock, what, path);
}

static void do_get(int sock, char *payload, uint32_t len) {
    if (len < 1 || payload[len - 1] != 0) {
        send_text(sock, 'F', "malformed get request");
        return;
    }
    int fd = open(payload, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fail(sock, "open", payload);
        return;
    }
    char *buf = malloc(CHUNK);
    ssize_t n;
    while ((n = read(fd, buf, CHUNK)) > 0) {
        if (send_frame(sock, 'D', buf, (uint32_t)n) < 0) break;
    }
    int saved = errno;
    free(buf);
    close(fd);
    send_frame(sock, 'D', NULL, 0);
    if (n < 0) {
        errno = saved;
        fail(sock, "read", payload);
    } else {
        send_frame(sock, 'K', NULL, 0);
    }
}

static void serve(int sock) {
    char *payload;
    uint32_t len;
    int type = recv_frame(sock, &payload, &len);
    if (type < 0) return;
    switch (type) {
        case 'H': send_text(sock, 'H', "virt-agent 1"); break;
        case 'E': do_exec(sock, payload, len); break;
        case 'P': do_put(sock, payload, len); break;
        case 'G': do_get(sock, payload, len); break;
        default: send_text(sock, 'F', "unknown request"); break;
    }
    free(payload);
}

static int connect_host(unsigned port) {
    int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = port};
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
        close(s);
        return -1;
    }
    return s;
}

/* connect mode: stdin to the host, then the host's answer to stdout. */
static int client(unsigned port) {
    int s = connect_host(port);
    if (s < 0) {
        fprintf(stderr, "virt-agent: connect to host port %u: %s\n", port, strerror(errno));
        return 1;
    }
    char *buf = malloc(CHUNK);
    int in_open = 1;
    for (;;) {
        struct pollfd fds[2] = {{s, POLLIN, 0}, {0, in_open ? POLLIN : 0, 0}};
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            return 1;
        }
        if (in_open && fds[1].revents) {
            ssize_t n = read(0, buf, CHUNK);
            if (n > 0) {
                if (write_all(s, buf, (size_t)n) < 0) return 1;
            } else {
                shutdown(s, SHUT_WR);
                in_open = 0;
            }
        }
        if (fds[0].revents) {
            ssize_t n = read(s, buf, CHUNK);
            if (n <= 0) break;
            if (write_all(1, buf, (size_t)n) < 0) return 1;
        }
    }
    close(s);
    return 0;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc == 3 && strcmp(argv[1], "connect") == 0) return client((unsigned)strtoul(argv[2], NULL, 10));
    unsigned port = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 1024;
    int l = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 64) < 0) {
        fprintf(stderr, "virt-agent: cannot listen on vsock port %u: %s\n", port, strerror(errno));
        return 1;
    }
    signal(SIGCHLD, SIG_IGN); /* connection handlers reap themselves */
    fprintf(stderr, "virt-agent: listening on vsock port %u\n", port);
    int hello = connect_host(port);
    if (hello >= 0) {
        send_text(hello, 'H', "virt-agent 1");
        close(hello);
    }
    for (;;) {
        int s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        if (s < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            continue;
        }
        pid_t pid = fork();
        if (pid == 0) {
            close(l);
            signal(SIGCHLD, SIG_DFL);
            serve(s);
            close(s);
            _exit(0);
        }
        close(s);
    }
}
