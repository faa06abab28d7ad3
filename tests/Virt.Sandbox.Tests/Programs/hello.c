#include <stdio.h>
int main(void) { printf("hello, sandbox\n"); return 0; }
