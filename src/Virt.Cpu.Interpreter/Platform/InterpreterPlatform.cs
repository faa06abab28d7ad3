using Virt.Platform;

namespace Virt.Cpu.Interpreter;

/// <summary>
/// The interrupt controllers and timers a partition emulates (the way an in-kernel irqchip does), as the
/// <see cref="IInterruptPlatform"/> the partition was given, plus what the vCPU needs around them: a wake-up event
/// for HLT and an attention flag the vCPU reads once per block. The vCPU handles the platform's ports, MMIO pages and
/// MSRs before it would exit to the host, and moves its clock with retired instructions or the host clock.
/// </summary>
/// <remarks>One per vCPU: the platform is shared; the local controller, wake-up event and attention flag are the vCPU's.</remarks>
internal sealed class InterpreterPlatform : IDisposable
{
    private readonly ManualResetEventSlim _wake = new(false);
    private readonly int _vcpuIndex;
    private volatile bool _attention = true;

    public InterpreterPlatform(IInterruptPlatform platform, int vcpuIndex, long crystalFrequency)
    {
        Platform = platform;
        Clock = platform.Clock;
        _vcpuIndex = vcpuIndex;
        LocalController = platform.GetLocalController(vcpuIndex);
        LocalController.InterruptRequested = Signal;
        CrystalFrequency = crystalFrequency;
    }

    public IInterruptPlatform Platform { get; }

    public IPlatformClock Clock { get; }

    /// <summary>The vCPU's local interrupt controller.</summary>
    public ILocalInterruptController LocalController { get; }

    /// <summary>The core crystal (and local timer) frequency CPUID leaf 0x15 reports.</summary>
    public long CrystalFrequency { get; }

    /// <summary>The vCPU this platform serves: setting <see cref="Attention"/> closes its chaining gate.</summary>
    internal InterpreterVcpu? Owner { get; set; }

    /// <summary>Set when an interrupt may have become pending; the vCPU reads it once per block.</summary>
    public bool Attention
    {
        get => _attention;
        set
        {
            _attention = value;
            if (value)
            {
                Owner?.RaiseAttention();
            }
        }
    }

    /// <summary>Marks an interrupt as possibly pending and wakes a halted vCPU.</summary>
    public void Signal()
    {
        _attention = true;
        Owner?.RaiseAttention();
        _wake.Set();
    }

    /// <summary>Arms the wake event before the halted vCPU checks for interrupts.</summary>
    public void PrepareWait() => _wake.Reset();

    /// <summary>Sleeps until <see cref="Signal"/> or the timeout.</summary>
    public void Wait(int milliseconds) => _wake.Wait(milliseconds);

    public void SetLine(uint gsi, bool level) => Platform.SetInterruptLine(gsi, level);

    /// <summary>Whether <paramref name="port"/> belongs to the platform (then the vCPU handles it without an exit).</summary>
    public bool TryPort(ushort port, int size, bool isWrite, ref ulong value)
    {
        Span<byte> data = stackalloc byte[8];
        data = data[..Math.Clamp(size, 1, 8)];
        if (isWrite)
        {
            ToBytes(value, data);
        }

        if (!Platform.TryAccessPort(port, data, isWrite))
        {
            return false;
        }

        if (!isWrite)
        {
            value = FromBytes(data);
        }

        return true;
    }

    /// <summary>Whether <paramref name="phys"/> is one of the platform's MMIO pages (then the vCPU handles it without an exit).</summary>
    public bool OwnsMmio(ulong phys) => Platform.OwnsMmio(phys);

    /// <summary>Accesses the platform's MMIO page at <paramref name="phys"/>.</summary>
    public void Mmio(ulong phys, int size, bool isWrite, ref ulong value)
    {
        Span<byte> data = stackalloc byte[8];
        data = data[..Math.Clamp(size, 1, 8)];
        if (isWrite)
        {
            ToBytes(value, data);
        }

        Platform.TryAccessMmio(_vcpuIndex, phys, data, isWrite);
        if (!isWrite)
        {
            value = FromBytes(data);
        }
    }

    private static void ToBytes(ulong value, Span<byte> data)
    {
        for (int b = 0; b < data.Length; b++)
        {
            data[b] = (byte)(value >> (b * 8));
        }
    }

    private static ulong FromBytes(ReadOnlySpan<byte> data)
    {
        ulong value = 0;
        for (int b = 0; b < data.Length; b++)
        {
            value |= (ulong)data[b] << (b * 8);
        }

        return value;
    }

    /// <summary>Detaches the vCPU from its controller (the partition disposes the shared platform).</summary>
    public void Dispose()
    {
        LocalController.InterruptRequested = null;
        _wake.Dispose();
    }
}
