using System.Runtime.InteropServices;
using System.Runtime.Versioning;

namespace Virt.Cpu.Whp;

/// <summary>Owns a WHV_PARTITION_HANDLE; releasing it calls WHvDeletePartition.</summary>
[SupportedOSPlatform("windows")]
internal sealed class WhpPartitionHandle : SafeHandle
{
    public WhpPartitionHandle() : base(nint.Zero, ownsHandle: true) { }

    public override bool IsInvalid => handle == nint.Zero;

    protected override bool ReleaseHandle() => Interop.WinHvPlatform.DangerousDeletePartition(handle) >= 0;
}

/// <summary>Owns a WHV_EMULATOR_HANDLE; releasing it calls WHvEmulatorDestroyEmulator.</summary>
[SupportedOSPlatform("windows")]
internal sealed class WhpEmulatorHandle : SafeHandle
{
    public WhpEmulatorHandle() : base(nint.Zero, ownsHandle: true) { }

    public override bool IsInvalid => handle == nint.Zero;

    protected override bool ReleaseHandle() => Interop.WinHvEmulation.DangerousDestroyEmulator(handle) >= 0;
}
