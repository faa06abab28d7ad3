/*
 * virt_sandbox.h - guest side of the Virt.Sandbox host-function protocol.
 *
 * A program running in a Virt.Sandbox calls host functions (registered with
 * SandboxBuilder.WithHostFunction) through one reserved system-call number.
 * The call exits to the host once; the host reads the name and input from
 * guest memory, runs the function and writes the result back.
 *
 *   rax = VIRT_SANDBOX_SYS_HOST_CALL
 *   rdi = name, rsi = name length (1-256 bytes, UTF-8, no NUL needed)
 *   rdx = input, r10 = input length
 *   r8  = output buffer, r9 = output capacity
 *   returns the full length of the result (only min(result, capacity) bytes
 *   are copied; call again with a bigger buffer if it did not fit), or a
 *   negative errno: -ENOENT (no such function), -EFAULT (bad pointer),
 *   -EINVAL (bad length), -EIO (the host function failed).
 *
 *   rax = VIRT_SANDBOX_SYS_READY marks the point where the program is
 *   initialised; the sandbox snapshots there and every later call resumes
 *   from it (the call returns 0). Without it, the first read of stdin is the
 *   ready point.
 *
 * Outside a sandbox both numbers fail with -ENOSYS, so a program can detect it.
 */
#ifndef VIRT_SANDBOX_H
#define VIRT_SANDBOX_H

#include <stddef.h>

#define VIRT_SANDBOX_SYS_HOST_CALL 0x56530000L
#define VIRT_SANDBOX_SYS_READY 0x56530001L

static inline long virt_sandbox_syscall6(long nr, long a0, long a1, long a2, long a3, long a4, long a5)
{
    long ret;
    register long r10 __asm__("r10") = a3;
    register long r8 __asm__("r8") = a4;
    register long r9 __asm__("r9") = a5;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(nr), "D"(a0), "S"(a1), "d"(a2), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

/* Calls host function `name`; returns the result length or a negative errno. */
static inline long virt_sandbox_call(const char *name, size_t name_len,
                                     const void *input, size_t input_len,
                                     void *output, size_t output_capacity)
{
    return virt_sandbox_syscall6(VIRT_SANDBOX_SYS_HOST_CALL, (long)name, (long)name_len,
                                 (long)input, (long)input_len, (long)output, (long)output_capacity);
}

/* Marks the snapshot point; returns 0 in a sandbox. */
static inline long virt_sandbox_ready(void)
{
    return virt_sandbox_syscall6(VIRT_SANDBOX_SYS_READY, 0, 0, 0, 0, 0, 0);
}

#endif
