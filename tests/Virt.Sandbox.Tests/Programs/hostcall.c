#include <stdio.h>
#include <string.h>
#include "virt_sandbox.h"
int main(void) {
    const char *msg = "ping";
    char out[64];
    long n = virt_sandbox_call("echo_upper", 10, msg, strlen(msg), out, sizeof out);
    if (n < 0) { printf("error %ld\n", n); return 1; }
    printf("host said %.*s\n", (int)n, out);
    long missing = virt_sandbox_call("nope", 4, msg, 4, out, sizeof out);
    printf("missing=%ld\n", missing);
    return 0;
}
