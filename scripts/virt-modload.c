/*
 * virt-modload: loads the appliance's kernel modules in one process (the guest kit's /init runs it once instead of
 * one insmod process per module; on an emulated CPU each process start is expensive).
 *
 *   virt-modload LIST DIR      load DIR/NAME.ko for each line of the file LIST, in order
 *
 * A line is NAME, loaded always, or NAME IDS, loaded only when the machine has a virtio device whose device ID is
 * one of IDS (decimal, comma-separated; /sys/bus/virtio/devices/N/device). The devices are looked up again after
 * every module loaded, since loading virtio_mmio is what makes them appear.
 *
 * Parameters come from the kernel command line as the kernel itself would read them for a built-in module:
 * every word MODULE.PARAM=VALUE (with '-' and '_' alike in MODULE) goes to MODULE as PARAM=VALUE.
 * A module that is already loaded is not an error. A module that fails is reported on stderr as
 * "virt-init: insmod NAME failed: REASON" and the others are still loaded; the exit status is 1 if any failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_CMDLINE 4096
#define MAX_LINE 256
#define MAX_IDS 64

/* Whether the word's module part (before the first '.') names MODULE, '-' and '_' being the same. */
static int names_module(const char *word, size_t len, const char *module) {
    size_t i = 0;
    for (; i < len && word[i] != '.'; i++) {
        char a = word[i] == '-' ? '_' : word[i];
        char b = module[i] == '-' ? '_' : module[i];
        if (b == '\0' || a != b) {
            return 0;
        }
    }
    return i < len && module[i] == '\0';
}

/* Appends to PARAMS every MODULE.PARAM=VALUE word of CMDLINE, as PARAM=VALUE separated by spaces. */
static void module_params(const char *cmdline, const char *module, char *params, size_t size) {
    size_t used = 0;
    const char *p = cmdline;
    params[0] = '\0';
    while (*p != '\0') {
        while (*p == ' ' || *p == '\n' || *p == '\t') {
            p++;
        }
        const char *start = p;
        while (*p != '\0' && *p != ' ' && *p != '\n' && *p != '\t') {
            p++;
        }
        size_t len = (size_t)(p - start);
        if (len == 0 || !names_module(start, len, module)) {
            continue;
        }
        const char *param = memchr(start, '.', len) + 1;
        size_t plen = len - (size_t)(param - start);
        if (memchr(param, '=', plen) == NULL || used + plen + 2 > size) {
            continue;
        }
        if (used > 0) {
            params[used++] = ' ';
        }
        memcpy(params + used, param, plen);
        used += plen;
        params[used] = '\0';
    }
}

/* The device IDs of the virtio devices present, at most MAX_IDS; returns how many. */
static int virtio_devices(unsigned ids[MAX_IDS]) {
    int count = 0;
    DIR *dir = opendir("/sys/bus/virtio/devices");
    if (dir == NULL) {
        return 0;
    }
    struct dirent *e;
    char path[512];
    char text[32];
    while ((e = readdir(dir)) != NULL && count < MAX_IDS) {
        if (e->d_name[0] == '.') {
            continue;
        }
        snprintf(path, sizeof path, "/sys/bus/virtio/devices/%s/device", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            continue;
        }
        ssize_t n = read(fd, text, sizeof text - 1);
        close(fd);
        if (n > 0) {
            text[n] = '\0';
            ids[count++] = (unsigned)strtoul(text, NULL, 0);
        }
    }
    closedir(dir);
    return count;
}

/* Whether one of the comma-separated decimal IDS is among the COUNT device IDs in PRESENT. */
static int any_present(const char *list, const unsigned *present, int count) {
    const char *p = list;
    while (*p != '\0') {
        char *end;
        unsigned long id = strtoul(p, &end, 10);
        if (end == p) {
            return 0;
        }
        for (int i = 0; i < count; i++) {
            if (present[i] == id) {
                return 1;
            }
        }
        p = *end == ',' ? end + 1 : end;
        if (*end != ',') {
            break;
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: virt-modload LIST DIR\n");
        return 2;
    }

    char cmdline[MAX_CMDLINE] = "";
    int cfd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    if (cfd >= 0) {
        ssize_t n = read(cfd, cmdline, sizeof cmdline - 1);
        cmdline[n > 0 ? n : 0] = '\0';
        close(cfd);
    }

    FILE *list = fopen(argv[1], "re");
    if (list == NULL) {
        fprintf(stderr, "virt-init: cannot open %s: %s\n", argv[1], strerror(errno));
        return 1;
    }

    int status = 0;
    char line[MAX_LINE];
    char params[MAX_CMDLINE];
    char path[4096];
    unsigned present[MAX_IDS];
    int present_count = 0;
    int stale = 1;
    while (fgets(line, sizeof line, list) != NULL) {
        line[strcspn(line, "\r\n")] = '\0';
        char *name = line;
        char *ids = strchr(line, ' ');
        if (ids != NULL) {
            *ids++ = '\0';
            if (stale) {
                present_count = virtio_devices(present);
                stale = 0;
            }
            if (!any_present(ids, present, present_count)) {
                continue;
            }
        }
        if (name[0] == '\0') {
            continue;
        }
        snprintf(path, sizeof path, "%s/%s.ko", argv[2], name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            fprintf(stderr, "virt-init: insmod %s failed: %s\n", name, strerror(errno));
            status = 1;
            continue;
        }
        module_params(cmdline, name, params, sizeof params);
        if (syscall(SYS_finit_module, fd, params, 0) != 0) {
            if (errno != EEXIST) {
                fprintf(stderr, "virt-init: insmod %s failed: %s\n", name, strerror(errno));
                status = 1;
            }
        } else {
            stale = 1;
        }
        close(fd);
    }
    fclose(list);
    return status;
}
