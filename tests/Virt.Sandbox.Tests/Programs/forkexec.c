/* fork + execve of itself + waitpid, with a pipe from the child and an exit status back. */
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "child") == 0) {
        printf("child says %s\n", argc > 2 ? argv[2] : "nothing");
        return 7;
    }
    int p[2];
    pipe(p);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        dup2(p[1], 1);
        close(p[1]);
        execl("/proc/self/exe", "forkexec", "child", "hello", (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    char buf[128] = {0};
    ssize_t n, total = 0;
    while ((n = read(p[0], buf + total, sizeof buf - 1 - total)) > 0) total += n;
    int status = 0;
    pid_t waited = waitpid(pid, &status, 0);
    printf("parent read %zd: %s", total, buf);
    printf("waited right child: %d exited: %d status: %d\n", waited == pid, WIFEXITED(status), WEXITSTATUS(status));
    /* A second child that ends without exec, and a wait for any child. */
    if (fork() == 0) _exit(3);
    waitpid(-1, &status, 0);
    printf("second: %d\n", WEXITSTATUS(status));
    printf("no more children: %d\n", waitpid(-1, &status, WNOHANG));
    return 0;
}
