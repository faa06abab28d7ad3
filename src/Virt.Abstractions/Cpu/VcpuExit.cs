namespace Virt.Cpu;

/// <summary>Why <see cref="IVirtualCpu.Run"/> returned. Every backend reports the same reasons for the same guest.</summary>
public enum VcpuExitReason
{
    /// <summary>No exit (the default value).</summary>
    None = 0,
    /// <summary>The guest executed <c>IN</c>/<c>OUT</c> (or a string form). See <see cref="VcpuExit.Port"/>.</summary>
    PortIo,
    /// <summary>The guest accessed a physical address that is not RAM. See <see cref="VcpuExit.Address"/>.</summary>
    Mmio,
    /// <summary>The guest executed <c>HLT</c> and no interrupt is pending that would wake it.</summary>
    Halt,
    /// <summary>The guest caused a shutdown (triple fault).</summary>
    Shutdown,
    /// <summary>The guest made a hypercall (<c>VMCALL</c>/<c>VMMCALL</c>).</summary>
    Hypercall,
    /// <summary>The backend could not continue the guest (emulation failure, unhandled state). See <see cref="VcpuExit.Fault"/>.</summary>
    InternalError,
    /// <summary>The backend refused to enter the guest (invalid guest state). See <see cref="VcpuExit.Fault"/>.</summary>
    FailEntry,
    /// <summary>The guest requested a system event (reset, shutdown, crash). See <see cref="VcpuExit.SystemEvent"/>.</summary>
    SystemEvent,
    /// <summary><see cref="IVirtualCpu.RequestExit"/> was called; the guest can be resumed with another <see cref="IVirtualCpu.Run"/>.</summary>
    Interrupted,
    /// <summary>The vCPU retired the number of instructions set as its budget (backends that count instructions).</summary>
    BudgetExhausted,
    /// <summary>A single step or breakpoint requested by the host completed (backends that support debugging).</summary>
    Debug,
    /// <summary>A guest exception the host asked to see (e.g. an unhandled exception vector the backend reports instead of delivering).</summary>
    Exception,
}

/// <summary>The kind of system event in a <see cref="VcpuExitReason.SystemEvent"/> exit.</summary>
public enum SystemEventKind
{
    /// <summary>None.</summary>
    None = 0,
    /// <summary>The guest powered the machine off.</summary>
    Shutdown,
    /// <summary>The guest reset the machine.</summary>
    Reset,
    /// <summary>The guest reported a crash.</summary>
    Crash,
}

/// <summary>
/// One exit of a vCPU, as data. For port I/O and MMIO exits the bytes travel through
/// <see cref="IVirtualCpu.ExitData"/>: for a write the backend puts the guest's bytes there; for a
/// read the host fills it before the next <see cref="IVirtualCpu.Run"/>.
/// </summary>
public readonly struct VcpuExit
{
    private VcpuExit(VcpuExitReason reason, ushort port, GuestAddress address, int size, int count, bool isWrite, ulong value, SystemEventKind systemEvent, VcpuFault? fault, bool breakpointInstruction = false)
    {
        IsBreakpointInstruction = breakpointInstruction;
        Reason = reason;
        Port = port;
        Address = address;
        Size = size;
        Count = count;
        IsWrite = isWrite;
        Value = value;
        SystemEvent = systemEvent;
        Fault = fault;
    }

    /// <summary>Why the vCPU exited.</summary>
    public VcpuExitReason Reason { get; }

    /// <summary>For <see cref="VcpuExitReason.PortIo"/>: the I/O port.</summary>
    public ushort Port { get; }

    /// <summary>For <see cref="VcpuExitReason.Mmio"/>: the guest physical address.</summary>
    public GuestAddress Address { get; }

    /// <summary>For port I/O and MMIO: the access size in bytes (1, 2, 4 or 8).</summary>
    public int Size { get; }

    /// <summary>For port I/O: how many accesses of <see cref="Size"/> bytes (more than one for <c>REP INS/OUTS</c>).</summary>
    public int Count { get; }

    /// <summary>For port I/O and MMIO: whether the guest writes (<c>OUT</c>, store) rather than reads.</summary>
    public bool IsWrite { get; }

    /// <summary>For <see cref="VcpuExitReason.Hypercall"/>: the call number (RAX); for <see cref="VcpuExitReason.Exception"/>: the vector.</summary>
    public ulong Value { get; }

    /// <summary>
    /// For <see cref="VcpuExitReason.Debug"/>: what stopped the vCPU, in DR6 format: B0-B3 (bits 0-3) for the host hardware
    /// breakpoints that hit, BS (<see cref="GuestDebugSettings.SingleStepStatus"/>) for a completed single step; zero for an
    /// intercepted <c>INT3</c> (<see cref="IsBreakpointInstruction"/>).
    /// </summary>
    public ulong DebugStatus => Reason == VcpuExitReason.Debug ? Value : 0;

    /// <summary>For <see cref="VcpuExitReason.Debug"/>: the vCPU stopped at an <c>INT3</c> it was about to execute (RIP is at the instruction).</summary>
    public bool IsBreakpointInstruction { get; }

    /// <summary>For <see cref="VcpuExitReason.SystemEvent"/>: what the guest asked for.</summary>
    public SystemEventKind SystemEvent { get; }

    /// <summary>For failures (<see cref="VcpuExitReason.InternalError"/>, <see cref="VcpuExitReason.FailEntry"/>, <see cref="VcpuExitReason.Shutdown"/>): details, where the backend has them.</summary>
    public VcpuFault? Fault { get; }

    /// <summary>The number of data bytes of a port I/O or MMIO exit (<see cref="Size"/> times <see cref="Count"/>).</summary>
    public int DataLength => Size * Math.Max(Count, 1);

    /// <summary>A port I/O exit.</summary>
    public static VcpuExit PortIo(ushort port, int size, int count, bool isWrite) => new(VcpuExitReason.PortIo, port, default, size, count, isWrite, 0, default, null);

    /// <summary>An MMIO exit.</summary>
    public static VcpuExit Mmio(GuestAddress address, int size, bool isWrite) => new(VcpuExitReason.Mmio, 0, address, size, 1, isWrite, 0, default, null);

    /// <summary>An exit without data: <see cref="VcpuExitReason.Halt"/>, <see cref="VcpuExitReason.Interrupted"/>, <see cref="VcpuExitReason.BudgetExhausted"/>, <see cref="VcpuExitReason.Debug"/>.</summary>
    public static VcpuExit Simple(VcpuExitReason reason) => new(reason, 0, default, 0, 0, false, 0, default, null);

    /// <summary>A <see cref="VcpuExitReason.Debug"/> exit: <paramref name="status"/> in DR6 format (B0-B3, BS), or an intercepted <c>INT3</c>.</summary>
    public static VcpuExit DebugEvent(ulong status, bool breakpointInstruction) =>
        new(VcpuExitReason.Debug, 0, default, 0, 0, false, status & (GuestDebugSettings.SingleStepStatus | 0xF), default, null, breakpointInstruction);

    /// <summary>A hypercall exit with call number <paramref name="number"/>.</summary>
    public static VcpuExit Hypercall(ulong number) => new(VcpuExitReason.Hypercall, 0, default, 0, 0, false, number, default, null);

    /// <summary>A guest exception reported to the host.</summary>
    public static VcpuExit Exception(byte vector, VcpuFault? fault) => new(VcpuExitReason.Exception, 0, default, 0, 0, false, vector, default, fault);

    /// <summary>A system-event exit.</summary>
    public static VcpuExit FromSystemEvent(SystemEventKind kind) => new(VcpuExitReason.SystemEvent, 0, default, 0, 0, false, 0, kind, null);

    /// <summary>A failure exit (<see cref="VcpuExitReason.Shutdown"/>, <see cref="VcpuExitReason.InternalError"/>, <see cref="VcpuExitReason.FailEntry"/>) with details.</summary>
    public static VcpuExit Failure(VcpuExitReason reason, VcpuFault? fault) => new(reason, 0, default, 0, 0, false, 0, default, fault);

    /// <inheritdoc />
    public override string ToString() => Reason switch
    {
        VcpuExitReason.PortIo => $"PortIo({(IsWrite ? "out" : "in")} port=0x{Port:x} size={Size} count={Count})",
        VcpuExitReason.Mmio => $"Mmio({(IsWrite ? "write" : "read")} {Address} size={Size})",
        VcpuExitReason.Hypercall => $"Hypercall({Value})",
        VcpuExitReason.SystemEvent => $"SystemEvent({SystemEvent})",
        VcpuExitReason.Exception => $"Exception(vector={Value})",
        VcpuExitReason.Debug => IsBreakpointInstruction ? "Debug(INT3)" : $"Debug(dr6=0x{Value:x})",
        _ => Fault is null ? Reason.ToString() : $"{Reason}: {Fault}",
    };
}

/// <summary>What a backend knows about a failure: a description, a backend-specific code, and the guest state.</summary>
public sealed class VcpuFault
{
    /// <summary>Creates a fault description.</summary>
    /// <param name="description">What went wrong, in words.</param>
    /// <param name="code">Backend-specific code (KVM internal-error sub-error, hardware entry failure reason, exception vector).</param>
    /// <param name="rip">Guest RIP at the failure.</param>
    /// <param name="instructionBytes">Up to 15 bytes at the guest's RIP, where they could be read from guest memory.</param>
    /// <param name="registers">The general registers at the failure, where available.</param>
    public VcpuFault(string description, ulong code, ulong rip, ReadOnlyMemory<byte> instructionBytes, GeneralRegisters? registers)
    {
        Description = description;
        Code = code;
        Rip = rip;
        InstructionBytes = instructionBytes;
        Registers = registers;
    }

    /// <summary>What went wrong.</summary>
    public string Description { get; }

    /// <summary>Backend-specific code.</summary>
    public ulong Code { get; }

    /// <summary>Guest RIP.</summary>
    public ulong Rip { get; }

    /// <summary>Bytes at RIP (empty when they could not be read).</summary>
    public ReadOnlyMemory<byte> InstructionBytes { get; }

    /// <summary>General registers, where available.</summary>
    public GeneralRegisters? Registers { get; }

    /// <inheritdoc />
    public override string ToString() =>
        $"{Description} (code {Code}, rip=0x{Rip:x}, bytes=[{Convert.ToHexString(InstructionBytes.Span)}])";
}
