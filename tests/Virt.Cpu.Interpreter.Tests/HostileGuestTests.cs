using Virt.Boot;

namespace Virt.Cpu.Interpreter.Tests;

public sealed class HostileGuestTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Random_bytes_as_code_never_throw_into_the_host(bool userMode)
    {
        var rng = new Random(userMode ? 7 : 3);
        using var m = new Machine();
        var code = new byte[4096];
        var handlers = new byte[32 * 16];
        m.Start(StartMode.Long64, code);
        m.InstallIdt(0x20000);
        var start = m.Vcpu.GetSpecialRegisters();
        if (userMode)
        {
            start.Cs = ProcessorSetup.UserSegment(code: true);
            start.Ss = start.Ds = start.Es = ProcessorSetup.UserSegment(code: false);
        }

        var counting = (IInstructionCounting)m.Vcpu;
        for (int round = 0; round < 400; round++)
        {
            rng.NextBytes(code);
            rng.NextBytes(handlers);
            m.Memory.Write(new GuestAddress(Machine.CodeAddress), code);
            m.Memory.Write(new GuestAddress(0x20000), handlers);
            m.Vcpu.SetSpecialRegisters(start);
            m.Vcpu.SetGeneralRegisters(new GeneralRegisters
            {
                Rip = Machine.CodeAddress, Rsp = Machine.StackTop, Rflags = 2,
                Rax = (ulong)rng.NextInt64(), Rbx = (ulong)rng.NextInt64(), Rcx = (ulong)rng.Next(0, 100000), Rsi = (ulong)rng.Next(0, 1 << 22), Rdi = (ulong)rng.Next(0, 1 << 22),
            });
            counting.InstructionBudget = 20_000;
            for (int exits = 0; exits < 50; exits++)
            {
                var exit = m.Vcpu.Run();
                Assert.NotEqual(VcpuExitReason.InternalError, exit.Reason);
                if (exit.Reason is VcpuExitReason.BudgetExhausted or VcpuExitReason.Shutdown)
                {
                    break;
                }
            }
        }
    }
}
