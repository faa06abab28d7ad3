namespace Virt.Cpu.Interpreter.Tests;

/// <summary>A first-tier machine and a JIT machine run side by side, for the JIT tests.</summary>
internal static class JitLockstep
{
    /// <summary>
    /// Runs <paramref name="first"/> and <paramref name="jit"/> to their halt in slices of the same random budgets
    /// (<paramref name="nextBudget"/>), asserting after each slice that both stopped for the same reason with the same
    /// count and registers, and that every slice but the last ended by the budget (with <paramref name="budgetSpent"/>,
    /// also that the JIT machine's budget reads 0). Returns the number of slices.
    /// </summary>
    public static int RunInBudgetSlices(Machine first, Machine jit, Random rng, Func<Random, long> nextBudget, bool budgetSpent)
    {
        var ca = (IInstructionCounting)first.Vcpu;
        var cb = (IInstructionCounting)jit.Vcpu;
        int steps = 0;
        while (true)
        {
            long budget = nextBudget(rng);
            ca.InstructionBudget = budget;
            cb.InstructionBudget = budget;
            var ea = first.Vcpu.Run();
            var eb = jit.Vcpu.Run();
            Assert.True(ea.Reason == eb.Reason, $"{ea} / {eb}");
            Assert.Equal(ca.InstructionsRetired, cb.InstructionsRetired);
            Assert.Equal(first.Regs, jit.Regs);
            steps++;
            if (ea.Reason == VcpuExitReason.Halt)
            {
                return steps;
            }

            Assert.Equal(VcpuExitReason.BudgetExhausted, ea.Reason);
            if (budgetSpent)
            {
                Assert.Equal(0, cb.InstructionBudget);
            }
        }
    }
}
