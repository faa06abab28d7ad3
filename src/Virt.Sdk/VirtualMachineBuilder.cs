using Microsoft.Extensions.Logging;
using Virt.Boot;
using Virt.Cpu;
using Virt.Devices;
using Virt.Devices.Virtio;

namespace Virt;

/// <summary>
/// An immutable fluent builder for a <see cref="VirtualMachine"/>. Every <c>With*</c> method returns a new
/// builder; the original is unchanged, so a configured builder can serve as a template.
/// <see cref="Build"/> validates the whole configuration and creates the machine.
/// </summary>
/// <example>
/// <code>
/// await using var vm = VirtualMachine.CreateBuilder()
///     .WithMemoryMiB(64)
///     .WithFlatBinary(code, new GuestAddress(0x100000))
///     .WithEntryPoint(new GuestAddress(0x100000), StartMode.Long64)
///     .WithSerialConsole(Console.OpenStandardOutput())
///     .WithDebugExit()
///     .Build();
/// var exit = await vm.RunAsync(cancellationToken);
/// </code>
/// </example>
public sealed partial class VirtualMachineBuilder
{
    /// <summary>The default I/O port of the debug-exit device.</summary>
    public const ushort DefaultDebugExitPort = 0x501;

    /// <summary>The I/O port of the ACPI PM timer (<see cref="WithAcpiPmTimer"/>; 4 ports), as in QEMU's PIIX4 power-management block.</summary>
    public const ushort AcpiPmTimerPort = AcpiPmTimer.DefaultPort;

    /// <summary>The largest guest memory this builder accepts: 1 TiB.</summary>
    public const ulong MaxMemorySize = 1UL << 40;

    /// <summary>The most vCPUs this builder accepts.</summary>
    public const int MaxVcpuCount = 256;

    private readonly VirtualMachineConfiguration _config;

    /// <summary>Creates a builder with the defaults: 64 MiB, one vCPU, <see cref="BackendKind.Auto"/>, long-mode start.</summary>
    public VirtualMachineBuilder()
        : this(new VirtualMachineConfiguration())
    {
    }

    internal VirtualMachineBuilder(VirtualMachineConfiguration config) => _config = config;

    internal VirtualMachineConfiguration Configuration => _config;

    /// <summary>Names the VM (used in logs, thread names and traces). Default: <c>vm-1</c>, <c>vm-2</c>, ..., unique in the process.</summary>
    public VirtualMachineBuilder WithName(string name)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        return new(_config with { Name = name });
    }

    /// <summary>Sets the guest RAM size in bytes (a multiple of 4 KiB). RAM starts at guest address 0.</summary>
    public VirtualMachineBuilder WithMemory(ulong bytes) => new(_config with { MemorySize = bytes });

    /// <summary>Sets the guest RAM size in MiB.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="mebibytes"/> is zero or negative.</exception>
    public VirtualMachineBuilder WithMemoryMiB(int mebibytes)
    {
        if (mebibytes <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(mebibytes), mebibytes, $"The VM needs a positive amount of memory in MiB, not {mebibytes}; e.g. WithMemoryMiB(64) for a flat guest or WithMemoryMiB(256) for Linux.");
        }

        return new(_config with { MemorySize = (ulong)mebibytes << 20 });
    }

    /// <summary>Sets the number of vCPUs. Every vCPU starts at the entry point with the registers of <see cref="WithRegisters"/>, except that RDI holds the vCPU index so the guest can tell them apart.</summary>
    public VirtualMachineBuilder WithVcpus(int count) => new(_config with { VcpuCount = count });

    /// <summary>Chooses the CPU backend.</summary>
    public VirtualMachineBuilder WithBackend(BackendKind backend) => new(_config with { Backend = backend, CustomBackend = null });

    /// <summary>Uses a specific backend instance (for custom or preconfigured backends).</summary>
    public VirtualMachineBuilder WithBackend(IHypervisor backend)
    {
        ArgumentNullException.ThrowIfNull(backend);
        return new(_config with { CustomBackend = backend });
    }

    /// <summary>Shortcut for <see cref="WithBackend(BackendKind)"/> with <see cref="BackendKind.Kvm"/>.</summary>
    public VirtualMachineBuilder WithKvm() => WithBackend(BackendKind.Kvm);

    /// <summary>Shortcut for <see cref="WithBackend(BackendKind)"/> with <see cref="BackendKind.Interpreter"/>.</summary>
    public VirtualMachineBuilder WithInterpreter() => WithBackend(BackendKind.Interpreter);

    /// <summary>Attaches a 16550A UART at COM1 (port 0x3F8, IRQ 4) whose output goes to <paramref name="output"/>.</summary>
    /// <param name="output">Receives every byte the guest transmits.</param>
    /// <param name="input">Optional: bytes read from it are delivered to the guest's receiver.</param>
    public VirtualMachineBuilder WithSerialConsole(Stream output, Stream? input = null)
    {
        ArgumentNullException.ThrowIfNull(output);
        return new(_config with { SerialOutput = output, SerialWriter = null, SerialInput = input });
    }

    /// <summary>Attaches a 16550A UART at COM1 whose output is decoded as UTF-8 and written to <paramref name="output"/>.</summary>
    public VirtualMachineBuilder WithSerialConsole(TextWriter output)
    {
        ArgumentNullException.ThrowIfNull(output);
        return new(_config with { SerialWriter = output, SerialOutput = null, SerialInput = null });
    }

    /// <summary>
    /// Adds the debug-exit device: a value the guest writes to <paramref name="port"/> stops the VM with
    /// <see cref="StopReason.DebugExit"/> and the exit code it gives as <see cref="VirtualMachineExit.ExitCode"/>.
    /// </summary>
    /// <param name="port">The first port the device decodes.</param>
    /// <param name="width">
    /// How many ports the device decodes, and so the widest value it takes: 1 (the default: the low byte of any write),
    /// 2 or 4 (the whole of an <c>out dx, ax</c> or <c>out dx, eax</c>). <see cref="Build"/> refuses other widths.
    /// </param>
    /// <param name="convention">
    /// How the value becomes the exit code: <see cref="DebugExitConvention.Raw"/> (the default) reports the value;
    /// <see cref="DebugExitConvention.QemuIsaDebugExit"/> reports <c>(value &lt;&lt; 1) | 1</c> as QEMU's
    /// <c>isa-debug-exit</c> does, for guests written for QEMU. The code is computed in 32 bits and reported as a signed
    /// integer, as C's <c>exit(int)</c> would see it.
    /// </param>
    /// <example>
    /// <code>
    /// builder.WithDebugExit(0xF4, width: 4, DebugExitConvention.QemuIsaDebugExit) // QEMU's -device isa-debug-exit,iobase=0xf4,iosize=0x04
    /// </code>
    /// </example>
    public VirtualMachineBuilder WithDebugExit(ushort port = DefaultDebugExitPort, int width = 1, DebugExitConvention convention = DebugExitConvention.Raw) =>
        new(_config with { DebugExitPort = port, DebugExitWidth = width, DebugExitConvention = convention });

    /// <summary>
    /// Adds the ACPI power-management timer (a 32-bit counter at 3.579545 MHz, read-only) at port
    /// <see cref="AcpiPmTimerPort"/> to a VM that boots no kernel, so that a flat guest has a fixed-rate clock to read.
    /// A VM that boots a kernel always has it, and its FADT says where (<c>PM_TMR_BLK</c>, <c>TMR_VAL_EXT</c> set).
    /// </summary>
    /// <remarks>The timer follows the VM's clock, the one its TSC follows: the interpreter's virtual clock when it emulates the interrupt controllers, else the host's monotonic clock.</remarks>
    public VirtualMachineBuilder WithAcpiPmTimer() => new(_config with { AcpiPmTimer = true });

    /// <summary>Copies a flat binary into guest memory at <paramref name="address"/> when the VM is built.</summary>
    public VirtualMachineBuilder WithFlatBinary(ReadOnlyMemory<byte> image, GuestAddress address) =>
        new(_config with { Images = _config.Images.Add(new FlatImage(image, address)) });

    /// <summary>Reads a flat binary from <paramref name="path"/> and loads it at <paramref name="address"/>.</summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    public VirtualMachineBuilder WithFlatBinaryFile(string path, GuestAddress address)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"The flat binary '{path}' does not exist; check the path.", path);
        }

        return WithFlatBinary(File.ReadAllBytes(path), address);
    }

    /// <summary>
    /// Sets where the boot vCPU starts and in which mode. For <see cref="StartMode.Real"/> the entry must be
    /// below 1 MiB and is split into CS:IP. For protected and long mode the VM builds a GDT, TSS and (long
    /// mode) identity page tables for the first 4 GiB in low memory (0x500-0xEFFF); keep images clear of it.
    /// </summary>
    public VirtualMachineBuilder WithEntryPoint(GuestAddress entry, StartMode mode = StartMode.Long64) =>
        new(_config with { EntryPoint = entry, StartMode = mode });

    /// <summary>Sets the initial general registers of every vCPU (RIP is overridden by the entry point, RFLAGS bit 1 is forced).</summary>
    public VirtualMachineBuilder WithRegisters(GeneralRegisters registers) => new(_config with { InitialRegisters = registers });

    /// <summary>
    /// Adds a port-I/O device at <c>[start, start + length)</c>. The same <paramref name="device"/> serves every VM built
    /// from this builder and the VM does not dispose it; use <see cref="WithDevice{TDevice}"/> for a device per VM
    /// with an interrupt line.
    /// </summary>
    public VirtualMachineBuilder WithPortIoDevice(ushort start, ushort length, IPortIoDevice device, string name)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        return AddDevice(new DeviceSpec(name, new DeviceResources { Port = start, PortCount = length }, _ => device));
    }

    /// <summary>
    /// Adds an MMIO device at <c>[start, start + length)</c>; the range must not overlap guest RAM. The same
    /// <paramref name="device"/> serves every VM built from this builder and the VM does not dispose it; use
    /// <see cref="WithDevice{TDevice}"/> for a device per VM with an interrupt line or a window the VM chooses.
    /// </summary>
    public VirtualMachineBuilder WithMmioDevice(GuestAddress start, ulong length, IMmioDevice device, string name)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        return AddDevice(new DeviceSpec(name, new DeviceResources { MmioAddress = start, MmioSize = length }, _ => device));
    }

    /// <summary>Hides a CPUID feature from the guest (on top of what the backend cannot honour).</summary>
    public VirtualMachineBuilder WithoutCpuidFeature(CpuidFeature feature) =>
        new(_config with { MaskedCpuidFeatures = _config.MaskedCpuidFeatures.Add(feature), RequiredCpuidFeatures = _config.RequiredCpuidFeatures.Remove(feature) });

    /// <summary>
    /// Requires a CPUID feature: the guest sees it, or <see cref="Build"/> fails with
    /// <see cref="InvalidOperationException"/> naming the feature when the chosen backend cannot give it.
    /// </summary>
    public VirtualMachineBuilder WithCpuidFeature(CpuidFeature feature) =>
        new(_config with { RequiredCpuidFeatures = _config.RequiredCpuidFeatures.Add(feature), MaskedCpuidFeatures = _config.MaskedCpuidFeatures.Remove(feature) });

    /// <summary>
    /// Gives the guest the processor model <paramref name="model"/>: its required features must be offered by the backend
    /// (else <see cref="Build"/> fails naming them) and its hidden ones are masked, on top of earlier
    /// <see cref="WithCpuidFeature"/> and <see cref="WithoutCpuidFeature"/> calls.
    /// </summary>
    public VirtualMachineBuilder WithCpuModel(CpuModel model)
    {
        ArgumentNullException.ThrowIfNull(model);
        var b = this;
        foreach (var f in model.Hidden)
        {
            b = b.WithoutCpuidFeature(f);
        }

        foreach (var f in model.Required)
        {
            b = b.WithCpuidFeature(f);
        }

        return b;
    }

    /// <summary>
    /// Sets the physical address width the guest's CPUID reports (leaf 0x80000008), e.g. to the smallest width of the
    /// hosts a VM may migrate between. Guest RAM must fit below 2^<paramref name="bits"/>; a backend that cannot report
    /// the width (more bits than the host has; the interpreter implements 40 only) refuses it when the VM is built.
    /// </summary>
    public VirtualMachineBuilder WithPhysicalAddressBits(int bits) => new(_config with { PhysicalAddressBits = bits });

    /// <summary>
    /// Stops each vCPU after exactly <paramref name="instructions"/> instructions with
    /// <see cref="StopReason.InstructionLimit"/>. Only backends that count instructions (the interpreter) support it.
    /// </summary>
    public VirtualMachineBuilder WithInstructionBudget(long instructions) => new(_config with { InstructionBudget = instructions });

    /// <summary>
    /// Has the backend record which guest pages the guest writes, so that <see cref="VirtualMachine.MigrateAsync"/> can
    /// copy memory while the guest keeps running (pre-copy) and stop it only for the last few pages. Without it a
    /// migration pauses the guest for the whole copy. Costs one write fault per page after each round of a migration
    /// on KVM; nothing measurable on the interpreter.
    /// </summary>
    public VirtualMachineBuilder WithDirtyPageTracking(bool enabled = true) => new(_config with { TrackDirtyPages = enabled });

    /// <summary>
    /// Gives the VM the interrupt controllers and timer a guest OS expects (KVM: in-kernel irqchip and PIT).
    /// Device interrupts (UART, virtio) reach the guest only with it. A vCPU's <c>HLT</c> then waits for an
    /// interrupt instead of ending the vCPU.
    /// </summary>
    public VirtualMachineBuilder WithInterruptController(bool enabled = true) => new(_config with { InterruptController = enabled });

    /// <summary>Logs lifecycle events and device faults to <paramref name="loggerFactory"/>.</summary>
    public VirtualMachineBuilder WithLogging(ILoggerFactory loggerFactory)
    {
        ArgumentNullException.ThrowIfNull(loggerFactory);
        return new(_config with { LoggerFactory = loggerFactory });
    }

    /// <summary>
    /// Validates the configuration and places every device (ports, MMIO windows, interrupt lines), chooses the
    /// backend, allocates guest memory, creates the partition and vCPUs, loads the images, creates the devices
    /// and wires them. The VM is then <see cref="VirtualMachineState.Created"/>.
    /// </summary>
    /// <exception cref="ArgumentException">
    /// A setting is invalid, or the devices do not fit (overlapping ranges, a line or range that is taken, no free
    /// interrupt line, port range or MMIO window left); the message says which and what to change.
    /// </exception>
    /// <exception cref="InvalidOperationException">The chosen backend is not available here; the message says why.</exception>
    public VirtualMachine Build() => BuildFrom(_config);

    /// <summary>Builds a VM from <paramref name="config"/> (a restore passes the snapshot's configuration here).</summary>
    internal static VirtualMachine BuildFrom(VirtualMachineConfiguration config)
    {
        var _config = config;
        Validate(_config);

        // The backend first: creating it may start work on background threads that the rest of the set-up overlaps
        // (the interpreter compiles its hot paths).
        var selection = BackendSelector.Select(_config.Backend, _config.CustomBackend, RunsKernel(_config));
        var devices = new DeviceManager(_config);
        if (_config.InstructionBudget is not null && selection.Backend.Name is "kvm" or "whp")
        {
            throw new InvalidOperationException(
                $"An instruction budget needs a backend that counts instructions, but {selection.Backend.Name} was chosen. Use WithInterpreter(), or drop WithInstructionBudget and use a time limit.");
        }

        return VirtualMachine.Create(_config, selection, devices);
    }

    /// <summary>
    /// Whether the guest runs a kernel (Linux, Multiboot, a restored Linux machine, or code that starts in real or
    /// protected mode), as opposed to a flat long-mode guest, which usually drops to user mode after a short set-up.
    /// </summary>
    internal static bool RunsKernel(VirtualMachineConfiguration c) =>
        !c.Kernel.IsEmpty || c.LinuxPlatform || (c.EntryPoint is not null && c.StartMode != StartMode.Long64);

    private static void Validate(VirtualMachineConfiguration c)
    {
        if (c.MemorySize == 0)
        {
            throw new ArgumentException("Memory size is 0. Give the VM memory with WithMemory(bytes) or WithMemoryMiB(n), e.g. WithMemoryMiB(64).");
        }

        if (c.MemorySize % 4096 != 0)
        {
            throw new ArgumentException($"Memory size {c.MemorySize} is not a multiple of 4 KiB (4096). Round it, e.g. to {(c.MemorySize + 4095) / 4096 * 4096}.");
        }

        if (c.MemorySize > MaxMemorySize)
        {
            throw new ArgumentException($"Memory size {c.MemorySize} exceeds the maximum of 1 TiB.");
        }

        if (c.PhysicalAddressBits is { } bits)
        {
            if (bits is < 32 or > 52)
            {
                throw new ArgumentException($"{bits} physical address bits is out of range; x86-64 processors have 32 to 52. Use WithPhysicalAddressBits(n) with 32 <= n <= 52.");
            }

            ulong top = RamLayout.ToGuestAddress(c.MemorySize - 1).Value;
            if (bits < 64 && top >> bits != 0)
            {
                throw new ArgumentException($"Guest RAM reaches 0x{top:x}, which {bits} physical address bits cannot address. Give the guest more bits or less memory.");
            }
        }

        if (c.VcpuCount < 1 || c.VcpuCount > MaxVcpuCount)
        {
            throw new ArgumentException($"vCPU count {c.VcpuCount} is out of range; use WithVcpus(n) with 1 <= n <= {MaxVcpuCount}.");
        }

        if (c.EntryPoint is null && c.Images.Count > 0)
        {
            throw new ArgumentException("Images are loaded but no entry point is set. Call WithEntryPoint(address, mode).");
        }

        if (c.EntryPoint is { } entry)
        {
            if (!RamLayout.Contains(c.MemorySize, entry.Value, 1))
            {
                throw new ArgumentException($"The entry point {entry} is outside guest RAM ({RamLayout.Describe(c.MemorySize)}). Load the code inside RAM or give the VM more memory.");
            }

            if (c.StartMode == StartMode.Real && entry.Value >= 0x100000)
            {
                throw new ArgumentException($"The entry point {entry} cannot be reached in real mode (it must be below 1 MiB). Move the code or start in protected or long mode.");
            }

            if (c.StartMode != StartMode.Real && c.MemorySize < 0x10000)
            {
                throw new ArgumentException("Protected and long mode starts need at least 64 KiB of RAM for the GDT, TSS and page tables.");
            }
        }

        foreach (var image in c.Images)
        {
            if (!RamLayout.Contains(c.MemorySize, image.Address.Value, (ulong)image.Bytes.Length))
            {
                throw new ArgumentException($"The image of {image.Bytes.Length} bytes at {image.Address} does not fit in guest RAM ({RamLayout.Describe(c.MemorySize)}). Load it elsewhere in RAM or give the VM more memory.");
            }

            if (c.StartMode != StartMode.Real && image.Address.Value < 0xF000 && image.Address.Value + (ulong)image.Bytes.Length > 0x500)
            {
                throw new ArgumentException($"The image at {image.Address} overlaps the GDT/TSS/page tables the VM builds at 0x500-0xEFFF. Load it at 0xF000 or above (e.g. 0x100000).");
            }
        }

        if (c.InstructionBudget is < 0)
        {
            throw new ArgumentException("The instruction budget must not be negative.");
        }

        ValidateDebugExit(c);
        ValidateLinux(c);
    }

    private static void ValidateDebugExit(VirtualMachineConfiguration c)
    {
        if (c.DebugExitPort is not { } exitPort)
        {
            return;
        }

        if (!DebugExitDevice.IsValidWidth(c.DebugExitWidth))
        {
            throw new ArgumentException($"A debug-exit port {c.DebugExitWidth} bytes wide does not exist; give WithDebugExit a width of 1, 2 or 4.");
        }

        if (exitPort + c.DebugExitWidth > 0x10000)
        {
            throw new ArgumentException($"The debug-exit port at 0x{exitPort:x}, {c.DebugExitWidth} bytes wide, runs past port 0xffff. Move it lower.");
        }

        if (!Enum.IsDefined(c.DebugExitConvention))
        {
            throw new ArgumentException($"Debug-exit convention {(int)c.DebugExitConvention} is unknown; use DebugExitConvention.Raw or QemuIsaDebugExit.");
        }
    }
}
