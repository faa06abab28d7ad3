/* C reference for PortIoRoundTripBenchmark: the same real-mode guest loop
 * (out dx, al; inc ax; dec cx; jnz) run with raw KVM ioctls, reporting ns per port-I/O exit.
 * Build and run: gcc -O2 -o portio portio.c && ./portio [rounds] */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>

#define EXITS_PER_ROUND 1000

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e9 + t.tv_nsec; }

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 20;
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    unsigned char *mem = mmap(0, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    /* at 0x1000: top: mov cx, 1000; mov dx, 0x80; l: out dx, al; inc ax; dec cx; jnz l; mov dx, 0x81; out dx, al; jmp top */
    unsigned char code[] = { 0xB9, 0xE8, 0x03, 0xBA, 0x80, 0x00, 0xEE, 0x40, 0x49, 0x75, 0xFB, 0xBA, 0x81, 0x00, 0xEE, 0xEB, 0xEF };
    memcpy(mem + 0x1000, code, sizeof code);
    struct kvm_userspace_memory_region region = { .slot = 0, .guest_phys_addr = 0, .memory_size = 1 << 20, .userspace_addr = (unsigned long)mem };
    ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region);
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    struct kvm_run *run = mmap(0, ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0), PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    struct kvm_sregs sregs; ioctl(vcpu, KVM_GET_SREGS, &sregs);
    sregs.cs.base = 0; sregs.cs.selector = 0; ioctl(vcpu, KVM_SET_SREGS, &sregs);
    struct kvm_regs regs = { .rip = 0x1000, .rflags = 2 }; ioctl(vcpu, KVM_SET_REGS, &regs);
    double best = 1e30, total = 0;
    unsigned sum = 0;
    for (int r = 0; r < rounds; r++) {
        double t0 = now();
        for (;;) {
            if (ioctl(vcpu, KVM_RUN, 0) < 0) { perror("KVM_RUN"); return 1; }
            if (run->exit_reason != KVM_EXIT_IO) { fprintf(stderr, "exit %u\n", run->exit_reason); return 1; }
            sum += *((unsigned char *)run + run->io.data_offset);
            if (run->io.port == 0x81) break;
        }
        double ns = (now() - t0) / EXITS_PER_ROUND;
        total += ns; if (ns < best) best = ns;
    }
    printf("C real-mode CPL 0 port-I/O exit: mean %.0f ns, best %.0f ns per exit (%d rounds of %d; checksum %u)\n", total / rounds, best, rounds, EXITS_PER_ROUND, sum);
    return 0;
}
