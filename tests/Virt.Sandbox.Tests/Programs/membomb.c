#include <stdlib.h>
#include <string.h>
#include <stdio.h>
int main(void) {
    for (;;) { char *p = malloc(1 << 20); if (!p) { fprintf(stderr, "out of memory\n"); return 3; } memset(p, 1, 1 << 20); }
}
