/* Recurses argv[1] KiB deep with a malloc'd block live, then checks the block is intact. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int depth(long n, volatile char *below) {
    volatile char frame[1024];
    frame[0] = (char)n;
    frame[1023] = below ? below[0] : 0;
    if (n == 0) return frame[0];
    return depth(n - 1, frame) + frame[1023];
}

int main(int argc, char **argv) {
    long kib = argc > 1 ? atol(argv[1]) : 1;
    size_t size = 4 << 20;
    unsigned char *block = malloc(size);
    if (!block) return 2;
    memset(block, 0x5A, size);
    int r = depth(kib, 0);
    for (size_t i = 0; i < size; i++)
        if (block[i] != 0x5A) { printf("block corrupted at %zu\n", i); return 1; }
    printf("depth %ld ok %d\n", kib, r & 1);
    return 0;
}
