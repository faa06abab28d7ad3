using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;
using Virt.Cpu.Interpreter.Tests.Differential;
using Virt.Testing;

namespace Virt.Cpu.Interpreter.Tests.Sse;

/// <summary>Runs a CPL 3 snippet with a chosen SSE state on either backend and returns the outcome and the SSE state after it.</summary>
internal static class SseHarness
{
    /// <summary>Where in the scratch buffer the initial XMM registers and MXCSR are placed.</summary>
    public const int StateOffset = 0x1800;

    public static TheoryData<string> Backends() => TestBackends.Both();

    public static IHypervisor Backend(string name) => TestBackends.Create(name);

    public static (SequenceResult Result, FpuState Fpu) Run(string backend, Action<Assembler> emit, byte[]? scratch = null, Action<FpuStateBuilder>? init = null)
    {
        using var vm = new DiffVm(Backend(backend));
        // The initial SSE state is loaded by the guest itself from the scratch page: it does not depend on
        // the backends' SetFpuState, and KVM_SET_FPU is not honoured on every host.
        var code = GuestProgram.Assemble(64, DiffVm.CodeAddress, a =>
        {
            for (int i = 0; i < 16; i++)
            {
                a.movups(new AssemblerRegisterXMM(Iced.Intel.Register.XMM0 + i), __xmmword_ptr[rbx + StateOffset + (16 * i)]);
            }

            a.ldmxcsr(__dword_ptr[rbx + StateOffset + 256]);
            emit(a);
            a.stmxcsr(__dword_ptr[rbx + StateOffset + 260]);
            a.hlt();
        });
        var b = new FpuStateBuilder(FpuState.Initial);
        init?.Invoke(b);
        var state = b.State;
        var buffer = new byte[DiffVm.ScratchSize];
        scratch?.CopyTo(buffer, 0);
        ((ReadOnlySpan<byte>)state.Xmm).CopyTo(buffer.AsSpan(StateOffset));
        BitConverter.TryWriteBytes(buffer.AsSpan(StateOffset + 256), state.Mxcsr);
        var regs = new GeneralRegisters { Rip = DiffVm.CodeAddress, Rsp = DiffVm.ScratchAddress + 0x1000, Rflags = 0x202, Rbx = DiffVm.ScratchAddress };
        var r = vm.Run(code, DiffVm.CodeAddress + (ulong)code.Length - 1, regs, buffer);
        // MXCSR is read back by the guest when the snippet completes: KVM_GET_FPU does not report it on every host.
        var after = vm.Vcpu.GetFpuState();
        if (r.Vector == -2)
        {
            after.Mxcsr = BitConverter.ToUInt32(r.Scratch, StateOffset + 260);
        }

        return (r, after);
    }

    public static uint Single(in FpuState s, int reg, int lane) => BitConverter.ToUInt32(s.Xmm[(reg * 16)..][(lane * 4)..]);

    public static ulong Double(in FpuState s, int reg, int lane) => BitConverter.ToUInt64(s.Xmm[(reg * 16)..][(lane * 8)..]);

    public static byte[] Scratch(params ulong[] qwords)
    {
        var b = new byte[qwords.Length * 8];
        for (int i = 0; i < qwords.Length; i++)
        {
            BitConverter.TryWriteBytes(b.AsSpan(i * 8), qwords[i]);
        }

        return b;
    }
}

/// <summary>Mutable holder so tests can set XMM lanes and MXCSR before a run.</summary>
internal sealed class FpuStateBuilder(FpuState state)
{
    private FpuState _state = state;

    public FpuState State => _state;

    public uint Mxcsr
    {
        get => _state.Mxcsr;
        set => _state.Mxcsr = value;
    }

    public void SetQ(int reg, ulong lo, ulong hi)
    {
        BitConverter.TryWriteBytes(_state.GetXmm(reg), lo);
        BitConverter.TryWriteBytes(_state.GetXmm(reg)[8..], hi);
    }

    public void SetS(int reg, float a, float b = 0, float c = 0, float d = 0)
    {
        var x = _state.GetXmm(reg);
        BitConverter.TryWriteBytes(x, a);
        BitConverter.TryWriteBytes(x[4..], b);
        BitConverter.TryWriteBytes(x[8..], c);
        BitConverter.TryWriteBytes(x[12..], d);
    }
}
