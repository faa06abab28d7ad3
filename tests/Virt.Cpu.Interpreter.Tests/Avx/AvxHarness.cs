using System.Buffers.Binary;
using System.Text;
using Virt.Cpu.Interpreter.Tests.Differential;
using Virt.X86;

namespace Virt.Cpu.Interpreter.Tests.Avx;

/// <summary>What one AVX snippet left behind: the <see cref="SequenceResult"/> of <see cref="DiffVm"/>, the sixteen YMM registers, MXCSR and the x87 part of the XSAVE image.</summary>
/// <param name="Run">Registers, flags, the exception and the scratch memory.</param>
/// <param name="Ymm">YMM0-YMM15, 32 bytes each (bits 127:0 from the legacy region, 255:128 from the AVX component).</param>
/// <param name="Mxcsr">MXCSR from the legacy region.</param>
/// <param name="X87">Bytes 0-3 (FCW, FSW) and 32-159 (ST0-ST7) of the legacy region: the x87 state the XSAVE tests load and save.</param>
internal sealed record AvxResult(SequenceResult Run, byte[] Ymm, uint Mxcsr, byte[] X87);

/// <summary>
/// A <see cref="DiffVm"/> with AVX enabled (CR4.OSXSAVE and XCR0 = 7, or what a test chooses): before each run the
/// vector registers and MXCSR are set from the scratch buffer through <see cref="IVirtualCpu.SetXsaveState"/> (the
/// guest loads them again itself: see <see cref="AvxGenerator"/>), and after it they are read back through
/// <see cref="IVirtualCpu.GetXsaveState"/>, the AVX component at offset 576 of the image.
/// </summary>
internal sealed class AvxVm : IDisposable
{
    /// <summary>Scratch offset of the initial YMM registers (16 × 32 bytes).</summary>
    public const int YmmInit = 0x1800;

    /// <summary>Scratch offset of the initial MXCSR.</summary>
    public const int MxcsrInit = 0x1A00;

    /// <summary>Scratch offset of the initial x87 state (FCW, then ST0-ST7 as 16-byte slots), used when <see cref="X87State"/> is set.</summary>
    public const int X87Init = 0x1A40;

    private readonly ulong _xcr0;

    /// <param name="hypervisor">The backend.</param>
    /// <param name="compatibility">CPL 3 code runs in 32-bit compatibility mode.</param>
    /// <param name="xcr0">XCR0 for the runs.</param>
    /// <param name="osxsave">CR4.OSXSAVE set.</param>
    /// <param name="taskSwitched">CR0.TS set.</param>
    public AvxVm(IHypervisor hypervisor, bool compatibility = false, ulong xcr0 = 7, bool osxsave = true, bool taskSwitched = false)
    {
        Vm = new DiffVm(hypervisor, compatibility);
        var s = Vm.UserSpecialRegisters;
        if (osxsave)
        {
            s.Cr4 |= Cr4.OsXsave;
        }

        if (taskSwitched)
        {
            s.Cr0 |= Cr0.TaskSwitched;
        }

        Vm.UserSpecialRegisters = s;
        _xcr0 = xcr0;
    }

    /// <summary>The machine.</summary>
    public DiffVm Vm { get; }

    /// <summary>The x87 state is loaded from <see cref="X87Init"/> too (else the x87 component starts in its initial state).</summary>
    public bool X87State { get; set; }

    /// <summary>Loads the initial state from <paramref name="scratch"/>, runs <paramref name="code"/> and reads the state back.</summary>
    public AvxResult Run(byte[] code, ulong endRip, in GeneralRegisters regs, byte[] scratch)
    {
        var area = new byte[InterpreterVcpu.XsaveAvxOffset + InterpreterVcpu.XsaveAvxSize];
        BinaryPrimitives.WriteUInt16LittleEndian(area, 0x037F);
        if (X87State)
        {
            scratch.AsSpan(X87Init, 2).CopyTo(area);
            scratch.AsSpan(X87Init + 16, 128).CopyTo(area.AsSpan(32));
            area[4] = 0xFF; // every register valid
        }

        scratch.AsSpan(MxcsrInit, 4).CopyTo(area.AsSpan(24));
        BinaryPrimitives.WriteUInt32LittleEndian(area.AsSpan(28), 0xFFFF);
        for (int i = 0; i < 16; i++)
        {
            scratch.AsSpan(YmmInit + (32 * i), 16).CopyTo(area.AsSpan(160 + (16 * i)));
            scratch.AsSpan(YmmInit + (32 * i) + 16, 16).CopyTo(area.AsSpan(InterpreterVcpu.XsaveAvxOffset + (16 * i)));
        }

        bool avx = (_xcr0 & 4) != 0;
        BinaryPrimitives.WriteUInt64LittleEndian(area.AsSpan(512), avx ? 7UL : 3UL);
        Vm.Vcpu.SetXsaveState(new XsaveState(_xcr0, avx ? area : area.AsSpan(0, XsaveState.MinimumSize)));
        var run = Vm.Run(code, endRip, regs, scratch);
        return Read(run);
    }

    /// <summary>The vector state of the vCPU after <paramref name="run"/>.</summary>
    private AvxResult Read(SequenceResult run)
    {
        var xs = Vm.Vcpu.GetXsaveState();
        var a = xs.Area;
        ulong bv = (ulong)xs.StateComponents;
        var ymm = new byte[512];
        for (int i = 0; i < 16; i++)
        {
            if ((bv & 2) != 0)
            {
                a.Slice(160 + (16 * i), 16).CopyTo(ymm.AsSpan(32 * i));
            }

            if ((bv & 4) != 0 && xs.Size >= InterpreterVcpu.XsaveAvxOffset + InterpreterVcpu.XsaveAvxSize)
            {
                a.Slice(InterpreterVcpu.XsaveAvxOffset + (16 * i), 16).CopyTo(ymm.AsSpan((32 * i) + 16));
            }
        }

        var x87 = new byte[132];
        if ((bv & 1) != 0)
        {
            a[..4].CopyTo(x87);
            a.Slice(32, 128).CopyTo(x87.AsSpan(4));
        }
        else
        {
            BinaryPrimitives.WriteUInt16LittleEndian(x87, 0x037F);
        }

        return new AvxResult(run, ymm, BinaryPrimitives.ReadUInt32LittleEndian(a[24..]), x87);
    }

    /// <summary>The differences between two outcomes, or null when they are equal: those of <see cref="DifferentialTests.Compare"/>, then MXCSR, the x87 state and each YMM register that differs (both halves, high qword first).</summary>
    public static string? Compare(AvxResult kvm, AvxResult interp)
    {
        var sb = new StringBuilder(DifferentialTests.Compare(kvm.Run, interp.Run) ?? "");
        if (kvm.Mxcsr != interp.Mxcsr)
        {
            sb.Append($"mxcsr: kvm {kvm.Mxcsr:x}, interpreter {interp.Mxcsr:x}; ");
        }

        if (!kvm.X87.AsSpan().SequenceEqual(interp.X87))
        {
            sb.Append($"x87: kvm {Convert.ToHexString(kvm.X87)}, interpreter {Convert.ToHexString(interp.X87)}; ");
        }

        for (int i = 0; i < 16; i++)
        {
            var a = kvm.Ymm.AsSpan(32 * i, 32);
            var b = interp.Ymm.AsSpan(32 * i, 32);
            if (!a.SequenceEqual(b))
            {
                sb.Append($"ymm{i}: kvm {Hex(a)}, interpreter {Hex(b)}; ");
            }
        }

        return sb.Length == 0 ? null : sb.ToString();
    }

    /// <summary>A YMM register as four qwords, the highest first.</summary>
    public static string Hex(ReadOnlySpan<byte> ymm)
    {
        var sb = new StringBuilder();
        for (int q = 3; q >= 0; q--)
        {
            sb.Append(System.Globalization.CultureInfo.InvariantCulture, $"{BinaryPrimitives.ReadUInt64LittleEndian(ymm[(8 * q)..]):x16}");
            if (q > 0)
            {
                sb.Append('_');
            }
        }

        return sb.ToString();
    }

    public void Dispose() => Vm.Dispose();
}
