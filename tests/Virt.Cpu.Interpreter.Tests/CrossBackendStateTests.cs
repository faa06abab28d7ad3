using Virt.Cpu.Interpreter.Tests.Differential;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>A vCPU's state taken on one backend continues the same program on the other.</summary>
public sealed class CrossBackendStateTests
{
    private const ulong Scratch = DiffVm.ScratchAddress;

    /// <summary>
    /// CPL 3: sets general, SSE and x87 state and memory, stops at UD2 (whose handler halts, then returns past it),
    /// then computes from all of it and ends with HLT (#GP at CPL 3, whose handler halts).
    /// </summary>
    private static byte[] Program() => GuestProgram.Assemble(64, DiffVm.CodeAddress, a =>
    {
        a.mov(rax, 0x1111_2222_3333_4444);
        a.mov(r13, 7);
        a.mov(__qword_ptr[Scratch], rax);
        a.movq(xmm3, rax);
        a.fld1();
        a.mov(__dword_ptr[Scratch + 32], 0x7F80);
        a.ldmxcsr(__dword_ptr[Scratch + 32]);
        a.ud2();                           // the state is taken in the #UD handler's HLT
        a.add(rax, r13);
        a.mov(__qword_ptr[Scratch + 8], rax);
        a.paddq(xmm3, xmm3);
        a.movq(rbx, xmm3);
        a.fadd(st0, st0);
        a.fstp(__qword_ptr[Scratch + 16]);
        a.stmxcsr(__dword_ptr[Scratch + 36]);
        a.hlt();
    });

    public static TheoryData<string, string> Pairs() => new() { { "interpreter", "kvm" }, { "kvm", "interpreter" }, { "interpreter", "interpreter" }, { "kvm", "kvm" } };

    [Theory]
    [MemberData(nameof(Pairs))]
    public void State_taken_on_one_backend_continues_on_the_other(string from, string to)
    {
        using var a = new DiffVm(TestBackends.Create(from));
        using var b = new DiffVm(TestBackends.Create(to));
        var returning = DiffVm.HandlerAddress + (6 * 16);
        a.Memory.Write(new Virt.GuestAddress(returning), GuestProgram.Assemble(64, returning, x =>
        {
            x.hlt();
            x.add(__qword_ptr[rsp], 2);
            x.iretq();
        }));
        var first = a.Run(Program(), ulong.MaxValue, new GeneralRegisters { Rip = DiffVm.CodeAddress, Rsp = Scratch + 0x1000, Rflags = 0x202 }, new byte[DiffVm.ScratchSize]);
        Assert.True(first.Vector == 6, $"{first.Exit} vector {first.Vector} at 0x{first.Rip:x}");
        var state = a.Vcpu.GetState();

        var image = new byte[4 << 20];
        a.Memory.Read(Virt.GuestAddress.Zero, image);
        b.Memory.Write(Virt.GuestAddress.Zero, image);
        b.Vcpu.SetState(state);
        VcpuExit exit;
        do
        {
            exit = b.Vcpu.Run();
        }
        while (exit.Reason == VcpuExitReason.Interrupted);

        Assert.Equal(VcpuExitReason.Halt, exit.Reason);
        var regs = b.Vcpu.GetGeneralRegisters();
        Assert.Equal(DiffVm.HandlerAddress + (13 * 16) + 1, regs.Rip); // the closing HLT's #GP handler
        Assert.Equal(0x1111_2222_3333_444BUL, regs.Rax);
        Assert.Equal(0x2222_4444_6666_8888UL, regs.Rbx);
        Assert.Equal(0x1111_2222_3333_444BUL, b.Memory.Read<ulong>(new Virt.GuestAddress(Scratch + 8)));
        Assert.Equal(2.0, BitConverter.UInt64BitsToDouble(b.Memory.Read<ulong>(new Virt.GuestAddress(Scratch + 16))));
        Assert.Equal(0x7F80u, b.Memory.Read<uint>(new Virt.GuestAddress(Scratch + 36)));
    }
}
