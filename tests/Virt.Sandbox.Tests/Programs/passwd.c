#include <stdio.h>
int main(void) {
    FILE *f = fopen("/etc/passwd", "r");
    if (!f) { perror("/etc/passwd"); return 1; }
    char b[128]; fgets(b, sizeof b, f); fputs(b, stdout); return 0;
}
