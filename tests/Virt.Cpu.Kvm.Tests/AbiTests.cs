using System.Diagnostics;
using System.Globalization;
using System.Runtime.CompilerServices;
using Xunit;
using static Virt.Cpu.Kvm.Interop.Kvm;

namespace Virt.Cpu.Kvm.Tests;

/// <summary>
/// Compares the managed ioctl numbers, constants and struct layouts with the C headers of this host by
/// compiling a small program with gcc. Skipped where gcc or the KVM headers are missing.
/// </summary>
public sealed class AbiTests
{
    private static readonly (string CName, ulong Managed)[] s_values =
    [
        ("KVM_GET_API_VERSION", KVM_GET_API_VERSION),
        ("KVM_CREATE_VM", KVM_CREATE_VM),
        ("KVM_GET_MSR_INDEX_LIST", KVM_GET_MSR_INDEX_LIST),
        ("KVM_CHECK_EXTENSION", KVM_CHECK_EXTENSION),
        ("KVM_GET_VCPU_MMAP_SIZE", KVM_GET_VCPU_MMAP_SIZE),
        ("KVM_GET_SUPPORTED_CPUID", KVM_GET_SUPPORTED_CPUID),
        ("KVM_CREATE_VCPU", KVM_CREATE_VCPU),
        ("KVM_GET_DIRTY_LOG", KVM_GET_DIRTY_LOG),
        ("KVM_SET_USER_MEMORY_REGION", KVM_SET_USER_MEMORY_REGION),
        ("KVM_SET_TSS_ADDR", KVM_SET_TSS_ADDR),
        ("KVM_SET_IDENTITY_MAP_ADDR", KVM_SET_IDENTITY_MAP_ADDR),
        ("KVM_CREATE_IRQCHIP", KVM_CREATE_IRQCHIP),
        ("KVM_IRQ_LINE", KVM_IRQ_LINE),
        ("KVM_CREATE_PIT2", KVM_CREATE_PIT2),
        ("KVM_RUN", KVM_RUN),
        ("KVM_GET_REGS", KVM_GET_REGS),
        ("KVM_SET_REGS", KVM_SET_REGS),
        ("KVM_GET_SREGS", KVM_GET_SREGS),
        ("KVM_SET_SREGS", KVM_SET_SREGS),
        ("KVM_TRANSLATE", KVM_TRANSLATE),
        ("KVM_INTERRUPT", KVM_INTERRUPT),
        ("KVM_GET_MSRS", KVM_GET_MSRS),
        ("KVM_SET_MSRS", KVM_SET_MSRS),
        ("KVM_SET_SIGNAL_MASK", KVM_SET_SIGNAL_MASK),
        ("KVM_GET_FPU", KVM_GET_FPU),
        ("KVM_SET_FPU", KVM_SET_FPU),
        ("KVM_SET_CPUID2", KVM_SET_CPUID2),
        ("KVM_GET_CPUID2", KVM_GET_CPUID2),
        ("KVM_CAP_IRQCHIP", KVM_CAP_IRQCHIP),
        ("KVM_CAP_USER_MEMORY", KVM_CAP_USER_MEMORY),
        ("KVM_CAP_SET_TSS_ADDR", KVM_CAP_SET_TSS_ADDR),
        ("KVM_CAP_EXT_CPUID", KVM_CAP_EXT_CPUID),
        ("KVM_CAP_NR_VCPUS", KVM_CAP_NR_VCPUS),
        ("KVM_CAP_NR_MEMSLOTS", KVM_CAP_NR_MEMSLOTS),
        ("KVM_CAP_PIT2", KVM_CAP_PIT2),
        ("KVM_CAP_SET_IDENTITY_MAP_ADDR", KVM_CAP_SET_IDENTITY_MAP_ADDR),
        ("KVM_CAP_MAX_VCPUS", KVM_CAP_MAX_VCPUS),
        ("KVM_CAP_READONLY_MEM", KVM_CAP_READONLY_MEM),
        ("KVM_CAP_IMMEDIATE_EXIT", KVM_CAP_IMMEDIATE_EXIT),
        ("KVM_EXIT_UNKNOWN", KVM_EXIT_UNKNOWN),
        ("KVM_EXIT_EXCEPTION", KVM_EXIT_EXCEPTION),
        ("KVM_EXIT_IO", KVM_EXIT_IO),
        ("KVM_EXIT_HYPERCALL", KVM_EXIT_HYPERCALL),
        ("KVM_EXIT_DEBUG", KVM_EXIT_DEBUG),
        ("KVM_EXIT_HLT", KVM_EXIT_HLT),
        ("KVM_EXIT_MMIO", KVM_EXIT_MMIO),
        ("KVM_EXIT_IRQ_WINDOW_OPEN", KVM_EXIT_IRQ_WINDOW_OPEN),
        ("KVM_EXIT_SHUTDOWN", KVM_EXIT_SHUTDOWN),
        ("KVM_EXIT_FAIL_ENTRY", KVM_EXIT_FAIL_ENTRY),
        ("KVM_EXIT_INTR", KVM_EXIT_INTR),
        ("KVM_EXIT_INTERNAL_ERROR", KVM_EXIT_INTERNAL_ERROR),
        ("KVM_EXIT_SYSTEM_EVENT", KVM_EXIT_SYSTEM_EVENT),
        ("KVM_EXIT_IO_OUT", KVM_EXIT_IO_OUT),
        ("KVM_SYSTEM_EVENT_SHUTDOWN", KVM_SYSTEM_EVENT_SHUTDOWN),
        ("KVM_SYSTEM_EVENT_RESET", KVM_SYSTEM_EVENT_RESET),
        ("KVM_SYSTEM_EVENT_CRASH", KVM_SYSTEM_EVENT_CRASH),
        ("KVM_INTERNAL_ERROR_EMULATION", KVM_INTERNAL_ERROR_EMULATION),
        ("KVM_INTERNAL_ERROR_SIMUL_EX", KVM_INTERNAL_ERROR_SIMUL_EX),
        ("KVM_INTERNAL_ERROR_DELIVERY_EV", KVM_INTERNAL_ERROR_DELIVERY_EV),
        ("KVM_MEM_LOG_DIRTY_PAGES", KVM_MEM_LOG_DIRTY_PAGES),
        ("KVM_MEM_READONLY", KVM_MEM_READONLY),
        ("KVM_CPUID_FLAG_SIGNIFCANT_INDEX", KVM_CPUID_FLAG_SIGNIFCANT_INDEX),
        ("KVM_NR_INTERRUPTS", KVM_NR_INTERRUPTS),
        ("sizeof(struct kvm_userspace_memory_region)", (ulong)Unsafe.SizeOf<KvmUserspaceMemoryRegion>()),
        ("sizeof(struct kvm_dirty_log)", (ulong)Unsafe.SizeOf<KvmDirtyLog>()),
        ("sizeof(struct kvm_irq_level)", (ulong)Unsafe.SizeOf<KvmIrqLevel>()),
        ("sizeof(struct kvm_pit_config)", (ulong)Unsafe.SizeOf<KvmPitConfig>()),
        ("sizeof(struct kvm_segment)", (ulong)Unsafe.SizeOf<KvmSegment>()),
        ("sizeof(struct kvm_dtable)", (ulong)Unsafe.SizeOf<KvmDtable>()),
        ("sizeof(struct kvm_sregs)", (ulong)Unsafe.SizeOf<KvmSregs>()),
        ("sizeof(struct kvm_regs)", (ulong)Unsafe.SizeOf<GeneralRegisters>()),
        ("sizeof(struct kvm_fpu)", (ulong)Unsafe.SizeOf<KvmFpu>()),
        ("sizeof(struct kvm_msr_entry)", (ulong)Unsafe.SizeOf<KvmMsrEntry>()),
        ("sizeof(struct kvm_cpuid_entry2)", (ulong)Unsafe.SizeOf<KvmCpuidEntry2>()),
        ("sizeof(struct kvm_run)", (ulong)Unsafe.SizeOf<KvmRun>()),
        ("offsetof(struct kvm_regs, rip)", (ulong)OffsetOf<GeneralRegisters>(nameof(GeneralRegisters.Rip))),
        ("offsetof(struct kvm_regs, rflags)", (ulong)OffsetOf<GeneralRegisters>(nameof(GeneralRegisters.Rflags))),
        ("offsetof(struct kvm_sregs, cr0)", (ulong)OffsetOf<KvmSregs>(nameof(KvmSregs.Cr0))),
        ("offsetof(struct kvm_sregs, efer)", (ulong)OffsetOf<KvmSregs>(nameof(KvmSregs.Efer))),
        ("offsetof(struct kvm_sregs, interrupt_bitmap)", (ulong)OffsetOf<KvmSregs>(nameof(KvmSregs.InterruptBitmap))),
        ("offsetof(struct kvm_fpu, last_ip)", (ulong)OffsetOf<KvmFpu>(nameof(KvmFpu.LastIp))),
        ("offsetof(struct kvm_fpu, xmm)", (ulong)OffsetOf<KvmFpu>(nameof(KvmFpu.Xmm))),
        ("offsetof(struct kvm_fpu, mxcsr)", (ulong)OffsetOf<KvmFpu>(nameof(KvmFpu.Mxcsr))),
        ("offsetof(struct kvm_run, immediate_exit)", (ulong)OffsetOf<KvmRun>(nameof(KvmRun.ImmediateExit))),
        ("offsetof(struct kvm_run, exit_reason)", (ulong)OffsetOf<KvmRun>(nameof(KvmRun.ExitReason))),
        ("offsetof(struct kvm_run, ready_for_interrupt_injection)", (ulong)OffsetOf<KvmRun>(nameof(KvmRun.ReadyForInterruptInjection))),
        ("offsetof(struct kvm_run, if_flag)", (ulong)OffsetOf<KvmRun>(nameof(KvmRun.IfFlag))),
        ("offsetof(struct kvm_run, io.size)", (ulong)OffsetOf<KvmRun>(nameof(KvmRun.IoSize))),
        ("offsetof(struct kvm_run, io.port)", (ulong)OffsetOf<KvmRun>(nameof(KvmRun.IoPort))),
        ("offsetof(struct kvm_run, io.count)", (ulong)OffsetOf<KvmRun>(nameof(KvmRun.IoCount))),
        ("offsetof(struct kvm_run, io.data_offset)", (ulong)OffsetOf<KvmRun>(nameof(KvmRun.IoDataOffset))),
        ("offsetof(struct kvm_run, mmio.data)", (ulong)OffsetOf<KvmRun>(nameof(KvmRun.MmioData))),
        ("offsetof(struct kvm_run, mmio.len)", (ulong)OffsetOf<KvmRun>(nameof(KvmRun.MmioLen))),
        ("offsetof(struct kvm_run, mmio.is_write)", (ulong)OffsetOf<KvmRun>(nameof(KvmRun.MmioIsWrite))),
        ("offsetof(struct kvm_run, fail_entry.cpu)", (ulong)OffsetOf<KvmRun>(nameof(KvmRun.FailEntryCpu))),
        ("offsetof(struct kvm_run, internal.ndata)", (ulong)OffsetOf<KvmRun>(nameof(KvmRun.InternalNdata))),
        ("offsetof(struct kvm_run, internal.data)", (ulong)OffsetOf<KvmRun>(nameof(KvmRun.InternalData))),
        ("offsetof(struct kvm_run, system_event.type)", (ulong)OffsetOf<KvmRun>(nameof(KvmRun.SystemEventType))),
        ("offsetof(struct kvm_run, system_event.data)", (ulong)OffsetOf<KvmRun>(nameof(KvmRun.SystemEventData))),
        ("offsetof(struct kvm_run, hypercall.nr)", (ulong)OffsetOf<KvmRun>(nameof(KvmRun.HypercallNr))),
        ("offsetof(struct kvm_run, ex.error_code)", (ulong)OffsetOf<KvmRun>(nameof(KvmRun.ExceptionErrorCode))),
        ("sizeof(struct sigaction)", (ulong)Unsafe.SizeOf<Interop.Libc.SigActionData>()),
        ("sizeof(sigset_t)", (ulong)Unsafe.SizeOf<Interop.Libc.SigSet>()),
        ("offsetof(struct sigaction, sa_flags)", (ulong)OffsetOf<Interop.Libc.SigActionData>(nameof(Interop.Libc.SigActionData.Flags))),
        ("O_CLOEXEC", Interop.Libc.O_CLOEXEC),
        ("MAP_SHARED", Interop.Libc.MAP_SHARED),
    ];

    private static int OffsetOf<T>(string field) => (int)System.Runtime.InteropServices.Marshal.OffsetOf<T>(field);

    [Fact]
    public void Ioctl_numbers_constants_and_layouts_match_the_host_c_headers()
    {
        if (!OperatingSystem.IsLinux() || !File.Exists("/usr/include/linux/kvm.h") || FindGcc() is not { } gcc)
        {
            Assert.Skip("Needs gcc and /usr/include/linux/kvm.h to compare against the C headers.");
            return;
        }

        string dir = Directory.CreateTempSubdirectory("virt-kvm-abi-").FullName;
        try
        {
            string source = Path.Combine(dir, "abi.c");
            string exe = Path.Combine(dir, "abi");
            File.WriteAllText(source,
                "#define _GNU_SOURCE\n#include <stdio.h>\n#include <stddef.h>\n#include <signal.h>\n#include <fcntl.h>\n#include <sys/mman.h>\n#include <linux/kvm.h>\nint main(void) {\n" +
                string.Concat(s_values.Select(v => $"  printf(\"%llu\\n\", (unsigned long long)({v.CName}));\n")) +
                "  return 0;\n}\n");
            var (code, output) = RunProcess(gcc, $"-o \"{exe}\" \"{source}\"");
            Assert.True(code == 0, "gcc failed: " + output);
            (code, output) = RunProcess(exe, "");
            Assert.Equal(0, code);

            var lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.Equal(s_values.Length, lines.Length);
            var mismatches = s_values
                .Select((v, i) => (v.CName, v.Managed, C: ulong.Parse(lines[i], CultureInfo.InvariantCulture)))
                .Where(x => x.Managed != x.C)
                .Select(x => $"{x.CName}: managed {x.Managed}, C {x.C}")
                .ToArray();
            Assert.True(mismatches.Length == 0, string.Join("\n", mismatches));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static string? FindGcc() =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':')
            .Select(p => Path.Combine(p, "gcc"))
            .FirstOrDefault(File.Exists);

    private static (int ExitCode, string Output) RunProcess(string file, string arguments)
    {
        using var p = Process.Start(new ProcessStartInfo(file, arguments)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        })!;
        var stdout = p.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
        string stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, stdout.Result + stderr);
    }
}
