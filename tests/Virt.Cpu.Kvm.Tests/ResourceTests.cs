using Virt.Boot;
using Virt.Memory;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Kvm.Tests;

/// <summary>Counts this process's file descriptors, so nothing else in the process may run alongside.</summary>
[CollectionDefinition(nameof(FileDescriptorCollection), DisableParallelization = true)]
public sealed class FileDescriptorCollection;

[Collection(nameof(FileDescriptorCollection))]
public sealed class ResourceTests
{
    /// <summary>
    /// This process's descriptors of KVM objects (/dev/kvm, VMs, vCPUs, and the like), after finalizers have run: other
    /// descriptors (the test host's, the runtime's) come and go on their own.
    /// </summary>
    private static int OpenDescriptors()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        int n = 0;
        foreach (var fd in Directory.GetFiles("/proc/self/fd"))
        {
            string? target = null;
            try
            {
                target = new FileInfo(fd).LinkTarget;
            }
            catch (IOException)
            {
                // Closed while listed.
            }

            if (target is not null && (target.StartsWith("anon_inode:kvm", StringComparison.Ordinal) || target == "/dev/kvm"))
            {
                n++;
            }
        }

        return n;
    }

    [Fact]
    public void Two_hundred_partitions_with_vcpus_created_and_disposed_leave_no_descriptors_behind()
    {
        HostRequirements.RequireKvm();
        using var memory = GuestMemory.CreateRam(1 << 20);
        var hypervisor = new KvmHypervisor();
        // Warm up once-per-process state (host information, the kick signal handler) before counting.
        using (var warm = hypervisor.CreatePartition(memory, new PartitionOptions()))
        {
            warm.CreateVcpu(0).Dispose();
        }

        int before = OpenDescriptors();
        for (int i = 0; i < 200; i++)
        {
            using var partition = hypervisor.CreatePartition(memory, new PartitionOptions { VcpuCount = 2 });
            using var vcpu0 = partition.CreateVcpu(0);
            using var vcpu1 = partition.CreateVcpu(1);
        }

        Assert.Equal(before, OpenDescriptors());
    }

    [Fact]
    public void Disposing_a_partition_disposes_its_vcpus_and_closes_everything_once()
    {
        HostRequirements.RequireKvm();
        using var memory = GuestMemory.CreateRam(1 << 20);
        int before = OpenDescriptors();
        var partition = new KvmHypervisor().CreatePartition(memory, new PartitionOptions());
        var vcpu = partition.CreateVcpu(0);
        Assert.True(OpenDescriptors() > before);

        partition.Dispose();
        partition.Dispose();
        vcpu.Dispose();

        Assert.Equal(before, OpenDescriptors());
        Assert.Throws<ObjectDisposedException>(() => vcpu.Run());
        Assert.Throws<ObjectDisposedException>(() => vcpu.GetGeneralRegisters());
        Assert.Throws<ObjectDisposedException>(() => partition.CreateVcpu(0));
        vcpu.RequestExit(); // harmless after dispose
    }
}

public sealed class ConcurrencyTests
{
    [Fact]
    public void Two_vcpus_run_concurrently_on_two_threads_and_both_produce_their_output()
    {
        HostRequirements.RequireKvm();
        using var vm = TestVm.Create(new PartitionOptions { VcpuCount = 2 });
        for (int i = 0; i < 2; i++)
        {
            ulong code = TestVm.CodeAddress + (ulong)(i * 0x1000);
            ulong stack = 0x60000 + (ulong)(i * 0x8000);
            byte letter = (byte)('A' + i);
            vm.Start(StartMode.Long64, Testing.GuestProgram.Assemble(64, code, a =>
            {
                var loop = a.CreateLabel();
                a.mov(ecx, 10_000_000);
                a.Label(ref loop);
                a.dec(rcx);
                a.jnz(loop);
                a.mov(dx, TestVm.Com1);
                a.mov(al, letter);
                a.@out(dx, al);
                a.mov(dx, TestVm.Com1 + 1);
                a.@out(dx, al);
                var self = a.CreateLabel();
                a.Label(ref self);
                a.jmp(self);
            }), code, i, stack);
            vm.InstallPortWriteFallback(i);
            vm.EnterUserMode(code, stack, i);
        }

        var outputs = new List<(ushort Port, byte Value)>[] { [], [] };
        using var barrier = new Barrier(2);
        var threads = Enumerable.Range(0, 2).Select(i => new Thread(() =>
        {
            barrier.SignalAndWait();
            while (outputs[i].Count < 2)
            {
                var exit = TestVm.RunToExit(vm.Vcpus[i]);
                if (exit.Reason != VcpuExitReason.PortIo)
                {
                    outputs[i].Add((0, 0)); // recorded as a wrong output instead of throwing on this thread
                    return;
                }

                outputs[i].Add((exit.Port, vm.Vcpus[i].ExitData[0]));
            }
        })).ToArray();
        foreach (var t in threads)
        {
            t.Start();
        }

        foreach (var t in threads)
        {
            Assert.True(t.Join(TimeSpan.FromSeconds(60)));
        }

        for (int i = 0; i < 2; i++)
        {
            byte letter = (byte)('A' + i);
            Assert.Equal([(TestVm.Com1, letter), ((ushort)(TestVm.Com1 + 1), letter)], outputs[i]);
        }
    }
}
