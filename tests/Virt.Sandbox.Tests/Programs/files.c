/* A writable file tree: create, write, append, rename, link, symlink, directories, truncate, listing, devices. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int cmp(const void *a, const void *b) { return strcmp(*(char **)a, *(char **)b); }

static void list(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) { printf("opendir %s: %s\n", dir, strerror(errno)); return; }
    char *names[64]; int n = 0; struct dirent *e;
    while ((e = readdir(d)) && n < 64) if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, n, sizeof *names, cmp);
    printf("%s:", dir);
    for (int i = 0; i < n; i++) { printf(" %s", names[i]); free(names[i]); }
    printf("\n");
}

static void cat(const char *path) {
    char buf[256] = {0};
    int fd = open(path, O_RDONLY);
    if (fd < 0) { printf("open %s: %s\n", path, strerror(errno)); return; }
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    printf("%s (%zd): %s|\n", path, n, buf);
}

int main(void) {
    if (mkdir("work", 0755) != 0) { perror("mkdir"); return 1; }
    if (chdir("work") != 0) { perror("chdir"); return 1; }
    char cwd[256];
    printf("cwd ends with work: %d\n", strstr(getcwd(cwd, sizeof cwd), "/work") != NULL);
    int fd = open("a.txt", O_CREAT | O_WRONLY | O_TRUNC, 0644);
    write(fd, "alpha\n", 6);
    close(fd);
    fd = open("a.txt", O_WRONLY | O_APPEND);
    write(fd, "beta\n", 5);
    close(fd);
    cat("a.txt");
    printf("excl: %d %s\n", open("a.txt", O_CREAT | O_EXCL | O_WRONLY, 0644), strerror(errno));
    rename("a.txt", "b.txt");
    printf("old gone: %d %s\n", access("a.txt", F_OK), strerror(errno));
    symlink("b.txt", "link");
    char target[64] = {0};
    printf("readlink: %zd %s\n", readlink("link", target, sizeof target), target);
    cat("link");
    struct stat st;
    lstat("link", &st);
    printf("lstat link is link: %d\n", S_ISLNK(st.st_mode));
    stat("link", &st);
    printf("stat size: %lld reg: %d\n", (long long)st.st_size, S_ISREG(st.st_mode));
    mkdir("sub", 0700);
    mkdir("sub/deeper", 0700);
    fd = open("sub/deeper/c", O_CREAT | O_RDWR, 0600);
    write(fd, "0123456789", 10);
    ftruncate(fd, 4);
    lseek(fd, 0, SEEK_SET);
    char b4[16] = {0};
    printf("truncated: %zd %s\n", read(fd, b4, sizeof b4), b4);
    close(fd);
    list(".");
    list("sub/deeper");
    printf("rmdir nonempty: %d %s\n", rmdir("sub/deeper"), strerror(errno));
    unlink("sub/deeper/c");
    printf("rmdir empty: %d\n", rmdir("sub/deeper"));
    list("sub");
    /* An unlinked file stays readable through its descriptor. */
    fd = open("tmp", O_CREAT | O_RDWR, 0600);
    unlink("tmp");
    write(fd, "ghost", 5);
    lseek(fd, 0, SEEK_SET);
    memset(b4, 0, sizeof b4);
    printf("unlinked read: %zd %s\n", read(fd, b4, sizeof b4), b4);
    close(fd);
    FILE *t = tmpfile();
    fputs("temporary", t);
    rewind(t);
    char tb[32] = {0};
    fgets(tb, sizeof tb, t);
    printf("tmpfile: %s\n", tb);
    fclose(t);
    int null = open("/dev/null", O_RDWR);
    printf("null write: %zd read: %zd\n", write(null, "abc", 3), read(null, tb, 3));
    int zero = open("/dev/zero", O_RDONLY);
    memset(tb, 7, 8);
    read(zero, tb, 8);
    printf("zero: %d\n", tb[0] + tb[7]);
    int ur = open("/dev/urandom", O_RDONLY);
    printf("urandom: %zd\n", read(ur, tb, 16));
    chdir("..");
    list("work");
    printf("rename dir: %d\n", rename("work/sub", "work/moved"));
    list("work");
    FILE *f = fopen("work/moved/new", "w");
    fprintf(f, "made %d\n", 42);
    fclose(f);
    cat("work/moved/new");
    return 0;
}
