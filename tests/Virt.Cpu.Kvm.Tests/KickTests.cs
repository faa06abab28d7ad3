using Iced.Intel;
using Virt.Boot;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Kvm.Tests;

public sealed class KickTests
{
    /// <summary>Guest flag the spinning programs wait on.</summary>
    private const ulong FlagAddress = 0x5000;

    /// <summary>Upper bound for a Run that should end on a kick; reaching it means the kick was lost.</summary>
    private static readonly TimeSpan Hang = TimeSpan.FromSeconds(60);

    private static byte[] SpinUntilFlagThenOut() => GuestProgram.Assemble(64, TestVm.CodeAddress, a =>
    {
        var spin = a.CreateLabel();
        a.Label(ref spin);
        a.cmp(__byte_ptr[FlagAddress], 0);
        a.je(spin);
        a.mov(dx, TestVm.Com1);
        a.mov(al, (byte)'K');
        a.@out(dx, al);
        a.hlt();
    });

    private static VcpuExit RunOnThreadAndKick(IVirtualCpu vcpu, TimeSpan delayBeforeKick)
    {
        using var started = new ManualResetEventSlim();
        VcpuExit result = default;
        Exception? error = null;
        var thread = new Thread(() =>
        {
            try
            {
                started.Set();
                result = vcpu.Run();
            }
            catch (Exception e)
            {
                error = e;
            }
        });
        thread.Start();
        started.Wait(TestContext.Current.CancellationToken);
        Thread.Sleep(delayBeforeKick);
        vcpu.RequestExit();
        Assert.True(thread.Join(Hang), "Run did not return after RequestExit.");
        Assert.Null(error);
        return result;
    }

    [Fact]
    public void RequestExit_from_another_thread_stops_a_guest_spinning_in_jmp_self()
    {
        HostRequirements.RequireKvm();
        using var vm = TestVm.Create();
        vm.Start(StartMode.Long64, GuestProgram.Assemble(64, TestVm.CodeAddress, a =>
        {
            var self = a.CreateLabel();
            a.Label(ref self);
            a.jmp(self);
        }));

        var exit = RunOnThreadAndKick(vm.Vcpu, TimeSpan.FromMilliseconds(200));

        Assert.Equal(VcpuExitReason.Interrupted, exit.Reason);
        Assert.Equal(TestVm.CodeAddress, vm.Vcpu.GetGeneralRegisters().Rip);
    }

    [Fact]
    public void Interrupted_guest_resumes_where_it_stopped_when_run_again()
    {
        HostRequirements.RequireKvm();
        using var vm = TestVm.Create();
        vm.Start(StartMode.Long64, SpinUntilFlagThenOut());

        Assert.Equal(VcpuExitReason.Interrupted, RunOnThreadAndKick(vm.Vcpu, TimeSpan.FromMilliseconds(200)).Reason);
        vm.Memory.Write(new GuestAddress(FlagAddress), (byte)1);

        var exit = vm.Vcpu.Run();
        Assert.Equal(VcpuExitReason.PortIo, exit.Reason);
        Assert.Equal((byte)'K', vm.Vcpu.ExitData[0]);
        Assert.Equal(VcpuExitReason.Halt, vm.Vcpu.Run().Reason);
    }

    [Fact]
    public void User_mode_spin_is_stopped_by_RequestExit_and_resumed()
    {
        HostRequirements.RequireKvm();
        using var vm = TestVm.Create();
        vm.Start(StartMode.Long64, SpinUntilFlagThenOut());
        vm.InstallPortWriteFallback();
        vm.EnterUserMode(TestVm.CodeAddress, 0x70000);

        Assert.Equal(VcpuExitReason.Interrupted, RunOnThreadAndKick(vm.Vcpu, TimeSpan.FromMilliseconds(200)).Reason);
        vm.Memory.Write(new GuestAddress(FlagAddress), (byte)1);

        var exit = vm.Vcpu.Run();
        Assert.Equal(VcpuExitReason.PortIo, exit.Reason);
        Assert.Equal((byte)'K', vm.Vcpu.ExitData[0]);
    }

    [Fact]
    public void RequestExit_before_Run_makes_exactly_the_next_Run_return_Interrupted()
    {
        HostRequirements.RequireKvm();
        using var vm = TestVm.Create();
        vm.Memory.Write(new GuestAddress(FlagAddress), (byte)1);
        vm.Start(StartMode.Long64, SpinUntilFlagThenOut());

        vm.Vcpu.RequestExit();
        vm.Vcpu.RequestExit();

        Assert.Equal(VcpuExitReason.Interrupted, vm.Vcpu.Run().Reason);
        Assert.Equal(TestVm.CodeAddress, vm.Vcpu.GetGeneralRegisters().Rip);
        Assert.Equal(VcpuExitReason.PortIo, vm.Vcpu.Run().Reason);
    }

    [Fact]
    public void Kicks_racing_with_guest_exits_are_never_lost()
    {
        HostRequirements.RequireKvm();
        using var vm = TestVm.Create();
        // A guest that exits constantly: every kick races with KVM_RUN entry and exit.
        vm.Start(StartMode.Long64, GuestProgram.Assemble(64, TestVm.CodeAddress, a =>
        {
            var loop = a.CreateLabel();
            a.Label(ref loop);
            a.@out(dx, al);
            a.jmp(loop);
        }));

        for (int round = 0; round < 50; round++)
        {
            using var stop = new ManualResetEventSlim();
            int interrupted = 0;
            var runner = new Thread(() =>
            {
                while (true)
                {
                    var exit = vm.Vcpu.Run();
                    if (exit.Reason == VcpuExitReason.Interrupted)
                    {
                        interrupted++;
                        stop.Set();
                        return;
                    }
                }
            });
            runner.Start();
            Thread.Sleep(round % 5);
            vm.Vcpu.RequestExit();
            Assert.True(stop.Wait(Hang, TestContext.Current.CancellationToken), $"Round {round}: the kick was lost.");
            Assert.True(runner.Join(Hang));
            Assert.Equal(1, interrupted);
        }
    }

    [Fact]
    public void Dispose_from_another_thread_stops_a_running_vcpu()
    {
        HostRequirements.RequireKvm();
        using var vm = TestVm.Create();
        vm.Start(StartMode.Long64, SpinUntilFlagThenOut());
        VcpuExit result = default;
        using var started = new ManualResetEventSlim();
        var thread = new Thread(() =>
        {
            started.Set();
            result = vm.Vcpu.Run();
        });
        thread.Start();
        started.Wait(TestContext.Current.CancellationToken);
        Thread.Sleep(100);

        vm.Vcpu.Dispose();

        Assert.True(thread.Join(Hang));
        Assert.Equal(VcpuExitReason.Interrupted, result.Reason);
        Assert.Throws<ObjectDisposedException>(() => vm.Vcpu.Run());
        Assert.True(vm.Vcpu.ExitData.IsEmpty);
    }
}
