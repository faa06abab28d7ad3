#include <stdio.h>
#include <string.h>
#include <dirent.h>
int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "/data/input.txt";
    FILE *f = fopen(path, "r");
    if (!f) { perror(path); return 2; }
    char line[256];
    int n = 0;
    while (fgets(line, sizeof line, f)) { n++; fputs(line, stdout); }
    fclose(f);
    printf("lines=%d\n", n);
    DIR *d = opendir("/data");
    if (d) { struct dirent *e; while ((e = readdir(d))) if (e->d_name[0] != '.') printf("entry=%s\n", e->d_name); closedir(d); }
    return 0;
}
