#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void) {
    /* Many small and some large allocations (brk and mmap paths), freed and reused. */
    unsigned long sum = 0;
    void *keep[1000];
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < 1000; i++) { keep[i] = malloc(16 + (i * 37) % 4000); memset(keep[i], i, 16); }
        for (int i = 0; i < 1000; i += 2) { free(keep[i]); keep[i] = 0; }
        char *big = malloc(1 << 20);
        memset(big, round, 1 << 20);
        sum += big[12345];
        big = realloc(big, 3 << 20);
        sum += big[12345];
        free(big);
        for (int i = 0; i < 1000; i++) if (keep[i]) { sum += ((unsigned char *)keep[i])[3]; free(keep[i]); }
    }
    printf("sum=%lu\n", sum);
    return 0;
}
