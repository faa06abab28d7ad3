using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Virt.Boot;
using Virt.Cpu;
using Virt.Devices;
using Virt.Devices.Virtio;
using Virt.Memory;

namespace Virt;

/// <summary>
/// An x86-64 virtual machine running in this process. Lifecycle:
/// <see cref="VirtualMachineState.Created"/> -> <see cref="VirtualMachineState.Running"/> &lt;-&gt;
/// <see cref="VirtualMachineState.Paused"/> -> <see cref="VirtualMachineState.Stopped"/> ->
/// <see cref="VirtualMachineState.Disposed"/>. Create one with <see cref="CreateBuilder"/>.
/// </summary>
/// <remarks>
/// Each vCPU runs on its own host thread, which dispatches the guest's port-I/O and MMIO accesses to the
/// devices synchronously. Lifecycle methods are thread-safe and serialized.
/// </remarks>
public sealed partial class VirtualMachine : IAsyncDisposable
{
    private readonly VirtualMachineConfiguration _config;
    private readonly GuestMemory _memory;
    private readonly IPartition _partition;
    private readonly IVirtualCpu[] _vcpus;
    private readonly PortIoBus _ports = new();
    private readonly MmioBus _mmio = new();
    private readonly Serial16550? _serial;
    private readonly ILogger _logger;
    private readonly SemaphoreSlim _lifecycle = new(1, 1);
    private readonly Lock _sync = new();
    private readonly TaskCompletionSource<VirtualMachineExit> _exit = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly ManualResetEventSlim _resume = new(true);
    private Thread[] _threads = [];
    private CancellationTokenSource? _hostTasks;
    private Task? _serialPump;
    private VirtualMachineExit? _pendingExit;
    private TaskCompletionSource? _allParked;
    private int _state;
    private volatile bool _stopRequested;
    private volatile bool _pauseRequested;
    private int _liveThreads;
    private int _parkedThreads;
    private int _disposed;
    private readonly List<IAsyncDisposable> _owned = [];
    private readonly List<VirtioDeviceInfo> _virtio = [];

    private VirtualMachine(VirtualMachineConfiguration config, BackendSelection selection, GuestMemory memory, IPartition partition, IVirtualCpu[] vcpus, ILogger logger, Serial16550? serial)
    {
        _config = config;
        BackendSelection = selection;
        _memory = memory;
        _partition = partition;
        _vcpus = vcpus;
        _logger = logger;
        _serial = serial;
    }

    /// <summary>Creates a builder with the defaults (64 MiB, one vCPU, <see cref="BackendKind.Auto"/>).</summary>
    public static VirtualMachineBuilder CreateBuilder() => new();

    /// <summary>The VM's name.</summary>
    public string Name => _config.Name;

    /// <summary>The current lifecycle state.</summary>
    public VirtualMachineState State => (VirtualMachineState)Volatile.Read(ref _state);

    /// <summary>The backend running this VM and why it was chosen.</summary>
    public BackendSelection BackendSelection { get; }

    /// <summary>Guest physical memory (RAM at 0). Safe to read and write while the VM is not running.</summary>
    public IGuestMemory Memory => _memory;

    /// <summary>The number of vCPUs.</summary>
    public int VcpuCount => _vcpus.Length;

    /// <summary>How the VM stopped, once it has; otherwise <see langword="null"/>.</summary>
    public VirtualMachineExit? Exit => _exit.Task.IsCompletedSuccessfully ? _exit.Task.Result : null;

    /// <summary>Raised after every state change, on the thread that made it (possibly a vCPU thread).</summary>
    public event EventHandler<VirtualMachineStateChangedEventArgs>? StateChanged;

    internal PortIoBus PortBus => _ports;

    internal MmioBus MmioBus => _mmio;

    internal IPartition Partition => _partition;

    internal static VirtualMachine Create(VirtualMachineConfiguration config, BackendSelection selection)
    {
        var logger = config.LoggerFactory?.CreateLogger("Virt.VirtualMachine") ?? NullLogger.Instance;
        GuestMemory? memory = null;
        IPartition? partition = null;
        var vcpus = new List<IVirtualCpu>();
        try
        {
            memory = GuestMemory.CreateRam(config.MemorySize);
            foreach (var image in config.Images)
            {
                memory.Write(image.Address, image.Bytes.Span);
            }

            partition = selection.Backend.CreatePartition(memory, new PartitionOptions
            {
                VcpuCount = config.VcpuCount,
                MaskedCpuidFeatures = config.MaskedCpuidFeatures,
                InterruptController = config.InterruptController,
                InterruptPlatform = Virt.Devices.Interrupts.PcInterruptPlatform.Factory,
            });

            for (int i = 0; i < config.VcpuCount; i++)
            {
                var vcpu = partition.CreateVcpu(i);
                vcpus.Add(vcpu);
                InitializeVcpu(config, memory, vcpu, i);
            }

            string? commandLine = null;
            if (!config.Kernel.IsEmpty)
            {
                commandLine = BootLinux(config, memory, vcpus[0]);
            }

            Serial16550? serial = null;
            VirtualMachine? vm = null;
            if (config.HasSerialConsole)
            {
                var irq = new PartitionInterruptLine(partition, Serial16550.Com1Irq);
                serial = config.SerialWriter is { } writer ? Serial16550.ForTextWriter(irq, writer) : new Serial16550(irq, config.SerialOutput!);
            }

            vm = new VirtualMachine(config, selection, memory, partition, [.. vcpus], logger, serial) { KernelCommandLine = commandLine };
            try
            {
                vm.RegisterDevices();
            }
            catch
            {
                vm.DisposeOwnedAsync().AsTask().GetAwaiter().GetResult();
                throw;
            }

            LogCreated(logger, config.Name, selection.Name, selection.Reason, config.MemorySize >> 20, config.VcpuCount);
            return vm;
        }
        catch
        {
            foreach (var v in vcpus)
            {
                v.Dispose();
            }

            partition?.Dispose();
            memory?.Dispose();
            throw;
        }
    }

    private static void InitializeVcpu(VirtualMachineConfiguration config, GuestMemory memory, IVirtualCpu vcpu, int index)
    {
        if (config.EntryPoint is not { } entry)
        {
            return;
        }

        var sregs = ProcessorSetup.Prepare(memory, vcpu.GetSpecialRegisters(), config.StartMode);
        var regs = config.InitialRegisters ?? default;
        if (config.StartMode == StartMode.Real)
        {
            ushort segment = (ushort)((entry.Value >> 4) & 0xF000);
            sregs.Cs = SegmentRegister.RealMode(segment, code: true);
            regs.Rip = entry.Value - ((ulong)segment << 4);
        }
        else
        {
            regs.Rip = entry.Value;
        }

        if (config.InitialRegisters is null || config.InitialRegisters.Value.Rsp == 0)
        {
            regs.Rsp = DefaultStackTop - ((ulong)index * 0x100);
        }

        if (config.VcpuCount > 1)
        {
            regs.Rdi = (ulong)index;
        }

        regs.Rflags |= 2;
        vcpu.SetSpecialRegisters(sregs);
        vcpu.SetGeneralRegisters(regs);
        if (config.InstructionBudget is { } budget && vcpu is IInstructionCounting counting)
        {
            counting.InstructionBudget = budget;
        }
    }

    /// <summary>For Linux guests: the full kernel command line the VM passed (with console and device parameters); otherwise <see langword="null"/>.</summary>
    public string? KernelCommandLine { get; private init; }

    private static string BootLinux(VirtualMachineConfiguration config, GuestMemory memory, IVirtualCpu boot)
    {
        var virtio = Enumerable.Range(0, config.VirtioDevices.Count)
            .Select(i => (Address: new GuestAddress(VirtualMachineBuilder.VirtioMmioBase + ((ulong)i * 0x1000)), Irq: VirtualMachineBuilder.VirtioIrqs[i]))
            .ToList();
        var acpi = AcpiTables.Write(memory, new AcpiTablesOptions
        {
            ProcessorCount = config.VcpuCount,
            Com1 = config.HasSerialConsole,
            VirtioMmioDevices = config.VirtioDiscovery == VirtioDiscovery.Acpi
                ? [.. virtio.Select(v => new AcpiVirtioMmioDevice(v.Address, VirtioMmioTransport.WindowSize, (int)v.Irq))]
                : [],
        });

        // Linux restarts through the real-mode reset vector on hardware-reduced ACPI machines without EFI.
        ResetVector.Install(memory);

        var parts = new List<string>();
        if (!string.IsNullOrWhiteSpace(config.KernelCommandLine))
        {
            parts.Add(config.KernelCommandLine.Trim());
        }

        if (config.HasSerialConsole && config.KernelCommandLine?.Contains("console=", StringComparison.Ordinal) != true)
        {
            parts.Add("console=ttyS0");
        }

        if (config.KernelCommandLine?.Contains("pci=", StringComparison.Ordinal) != true)
        {
            // The machine has no PCI host bridge: spare the kernel the probing (and its "no config space access" error).
            parts.Add("pci=off");
        }

        if (config.VirtioDiscovery == VirtioDiscovery.CommandLine)
        {
            parts.AddRange(virtio.Select(v => VirtioMmioTransport.KernelCommandLineFragment(v.Address, v.Irq)));
        }

        string commandLine = string.Join(' ', parts);
        var options = new LinuxBootOptions
        {
            CommandLine = commandLine,
            Initrd = config.Initrd,
            AcpiRsdpAddress = acpi.Rsdp,
        };
        var result = KernelImage.Load(memory, config.Kernel.Span, options, boot.GetSpecialRegisters());
        boot.SetSpecialRegisters(result.SpecialRegisters);
        boot.SetGeneralRegisters(result.Registers);
        return commandLine;
    }

    /// <summary>The default stack top of vCPU 0 when the registers do not set RSP (vCPU i gets 256 bytes less per index).</summary>
    public const ulong DefaultStackTop = 0x8FF0;

    private void RegisterDevices()
    {
        if (_serial is not null)
        {
            _ports.Register(Serial16550.Com1Port, 8, _serial, "serial console (COM1)");
        }

        if (_config.DebugExitPort is { } port)
        {
            _ports.Register(port, 1, new DebugExitDevice(code => RequestStop(new VirtualMachineExit
            {
                Reason = StopReason.DebugExit,
                ExitCode = code,
                Description = $"debug exit with code {code}",
            })), "debug-exit");
        }

        if (!_config.Kernel.IsEmpty)
        {
            var reset = () => RequestStop(new VirtualMachineExit { Reason = StopReason.Reset, Description = "the guest reset the machine" });
            new I8042Controller(reset, null, null).AttachTo(_ports);
            new CmosRtc(TimeProvider.System).AttachTo(_ports);
            _ports.Register(AcpiSleepDevice.DefaultPort, AcpiSleepDevice.PortCount, new AcpiSleepDevice(
                () => RequestStop(new VirtualMachineExit { Reason = StopReason.PowerOff, Description = "the guest powered the machine off" }),
                reset), "ACPI sleep registers");
        }

        foreach (var d in _config.PortDevices)
        {
            _ports.Register(d.Start, d.Length, d.Device, d.Name);
        }

        foreach (var d in _config.MmioDevices)
        {
            _mmio.Register(d.Start, d.Length, d.Device, d.Name);
        }

        var virtioLogger = _config.LoggerFactory?.CreateLogger("Virt.Devices.Virtio");
        for (int i = 0; i < _config.VirtioDevices.Count; i++)
        {
            var spec = _config.VirtioDevices[i];
            var address = new GuestAddress(VirtualMachineBuilder.VirtioMmioBase + ((ulong)i * 0x1000));
            uint irq = VirtualMachineBuilder.VirtioIrqs[i];
            var device = spec.Create(_owned);
            var transport = new VirtioMmioTransport(device, _memory, new PartitionInterruptLine(_partition, irq), virtioLogger);
            _mmio.Register(address, VirtioMmioTransport.WindowSize, transport, $"{spec.Kind} #{i}");
            _virtio.Add(new VirtioDeviceInfo(spec.Kind, address, VirtioMmioTransport.WindowSize, irq));
        }
    }

    /// <summary>The VM's virtio devices: kind, MMIO window and interrupt line, in the order they were added.</summary>
    public IReadOnlyList<VirtioDeviceInfo> VirtioDevices => _virtio;

    /// <summary>
    /// The <c>virtio_mmio.device=...</c> parameters a Linux guest needs to find the VM's virtio devices,
    /// separated by spaces (empty without virtio devices).
    /// </summary>
    public string KernelCommandLineFragments => string.Join(' ', _virtio.Select(v => v.KernelCommandLineFragment));

    private async ValueTask DisposeOwnedAsync()
    {
        foreach (var o in _owned)
        {
            try
            {
                await o.DisposeAsync().ConfigureAwait(false);
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException)
            {
                LogDisposeFailed(_logger, e, _config.Name);
            }
        }

        _owned.Clear();
    }

    /// <summary>Starts the vCPUs. The VM must be <see cref="VirtualMachineState.Created"/>.</summary>
    /// <exception cref="InvalidOperationException">The VM is not in the Created state.</exception>
    public async Task StartAsync(CancellationToken cancellationToken = default)
    {
        await _lifecycle.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            ThrowIfDisposed();
            RequireState(VirtualMachineState.Created, "start");
            _hostTasks = new CancellationTokenSource();
            if (_serial is not null && _config.SerialInput is { } input)
            {
                _serialPump = PumpSerialInputAsync(input, _serial, _hostTasks.Token);
            }

            _liveThreads = _vcpus.Length;
            _threads = new Thread[_vcpus.Length];
            for (int i = 0; i < _vcpus.Length; i++)
            {
                int index = i;
                _threads[i] = new Thread(() => VcpuThread(index))
                {
                    IsBackground = true,
                    Name = $"{_config.Name} vCPU {index}",
                };
            }

            SetState(VirtualMachineState.Running);
            foreach (var t in _threads)
            {
                t.Start();
            }
        }
        finally
        {
            _lifecycle.Release();
        }
    }

    /// <summary>Parks every vCPU between two guest instructions. Completes when all are parked.</summary>
    /// <exception cref="InvalidOperationException">The VM is not running.</exception>
    public async Task PauseAsync(CancellationToken cancellationToken = default)
    {
        await _lifecycle.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            ThrowIfDisposed();
            RequireState(VirtualMachineState.Running, "pause");
            TaskCompletionSource parked;
            lock (_sync)
            {
                parked = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                _allParked = parked;
                _resume.Reset();
                _pauseRequested = true;
                CheckAllParked();
            }

            KickAll();
            await Task.WhenAny(parked.Task, _exit.Task).WaitAsync(cancellationToken).ConfigureAwait(false);
            if (!_exit.Task.IsCompleted)
            {
                SetState(VirtualMachineState.Paused);
            }
        }
        finally
        {
            _lifecycle.Release();
        }
    }

    /// <summary>Lets parked vCPUs continue.</summary>
    /// <exception cref="InvalidOperationException">The VM is not paused.</exception>
    public async Task ResumeAsync(CancellationToken cancellationToken = default)
    {
        await _lifecycle.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            ThrowIfDisposed();
            RequireState(VirtualMachineState.Paused, "resume");
            lock (_sync)
            {
                _pauseRequested = false;
                _allParked = null;
                SetState(VirtualMachineState.Running);
                _resume.Set();
            }
        }
        finally
        {
            _lifecycle.Release();
        }
    }

    /// <summary>
    /// Stops the guest (if it has not stopped already) and waits for every vCPU thread. Returns how the VM
    /// stopped: <see cref="StopReason.StoppedByHost"/> unless the guest stopped first.
    /// </summary>
    public async Task<VirtualMachineExit> StopAsync(CancellationToken cancellationToken = default)
    {
        await _lifecycle.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            ThrowIfDisposed();
            if (State == VirtualMachineState.Created)
            {
                var exit = new VirtualMachineExit { Reason = StopReason.StoppedByHost, Description = "stopped by the host before it started" };
                _pendingExit = exit;
                SetState(VirtualMachineState.Stopped);
                _exit.TrySetResult(exit);
                return exit;
            }

            RequestStop(new VirtualMachineExit { Reason = StopReason.StoppedByHost, Description = "stopped by the host" });
        }
        finally
        {
            _lifecycle.Release();
        }

        return await _exit.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Waits until the VM stops and returns why. Cancelling the token stops the waiting, not the VM.</summary>
    public Task<VirtualMachineExit> WaitForExitAsync(CancellationToken cancellationToken = default) =>
        _exit.Task.WaitAsync(cancellationToken);

    /// <summary>
    /// Starts the VM and waits until it stops. Cancelling <paramref name="cancellationToken"/> stops the VM; the
    /// result then says <see cref="StopReason.Cancelled"/> (no exception is thrown for that).
    /// </summary>
    public async Task<VirtualMachineExit> RunAsync(CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        await StartAsync(cancellationToken).ConfigureAwait(false);
        using (cancellationToken.Register(static s => ((VirtualMachine)s!).RequestStop(new VirtualMachineExit
        {
            Reason = StopReason.Cancelled,
            Description = "cancelled by the host",
        }), this))
        {
            return await _exit.Task.ConfigureAwait(false);
        }
    }

    /// <summary>
    /// The general registers of vCPU <paramref name="index"/>. Only while the VM is not running (created,
    /// paused or stopped), when the registers are stable.
    /// </summary>
    /// <exception cref="InvalidOperationException">The VM is running.</exception>
    public GeneralRegisters GetRegisters(int index)
    {
        RequireNotRunning();
        return _vcpus[index].GetGeneralRegisters();
    }

    /// <summary>The segment and control registers of vCPU <paramref name="index"/> (not while running).</summary>
    /// <exception cref="InvalidOperationException">The VM is running.</exception>
    public SpecialRegisters GetSpecialRegisters(int index)
    {
        RequireNotRunning();
        return _vcpus[index].GetSpecialRegisters();
    }

    /// <summary>Sets the general registers of vCPU <paramref name="index"/> (not while running).</summary>
    /// <exception cref="InvalidOperationException">The VM is running or stopped.</exception>
    public void SetRegisters(int index, in GeneralRegisters registers)
    {
        RequireNotRunning();
        _vcpus[index].SetGeneralRegisters(registers);
    }

    /// <summary>
    /// Sends bytes to the guest's serial console receiver at once. The UART's receive FIFO holds 16 bytes; what
    /// does not fit is lost, as on a line without flow control. Use <see cref="WriteToSerialConsoleAsync"/> to send more.
    /// </summary>
    /// <returns>How many bytes the receiver took.</returns>
    /// <exception cref="InvalidOperationException">The VM has no serial console.</exception>
    public int WriteToSerialConsole(ReadOnlySpan<byte> data) => RequireSerial().EnqueueInput(data);

    /// <summary>
    /// Sends bytes to the guest's serial console receiver with flow control: it hands the UART what its receive FIFO
    /// takes and waits for the guest to read before it sends more, so nothing is lost. Completes when all bytes
    /// are in the receiver.
    /// </summary>
    /// <exception cref="InvalidOperationException">The VM has no serial console.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled (some bytes may have been sent).</exception>
    public Task WriteToSerialConsoleAsync(ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default) =>
        RequireSerial().EnqueueInputAsync(data, cancellationToken);

    private Serial16550 RequireSerial() =>
        _serial ?? throw new InvalidOperationException("This VM has no serial console; add one with WithSerialConsole(...).");

    /// <summary>Stops the VM if it runs, then releases vCPUs, the partition and guest memory. Safe to call twice.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        await _lifecycle.WaitAsync().ConfigureAwait(false);
        try
        {
            if (State is VirtualMachineState.Running or VirtualMachineState.Paused)
            {
                RequestStop(new VirtualMachineExit { Reason = StopReason.StoppedByHost, Description = "stopped because the VM was disposed" });
                await _exit.Task.ConfigureAwait(false);
            }

            foreach (var t in _threads)
            {
                t.Join();
            }

            if (_hostTasks is not null)
            {
                await _hostTasks.CancelAsync().ConfigureAwait(false);
                if (_serialPump is not null)
                {
                    try
                    {
                        await _serialPump.ConfigureAwait(false);
                    }
                    catch (OperationCanceledException)
                    {
                    }
                }

                _hostTasks.Dispose();
            }

            foreach (var v in _vcpus)
            {
                v.Dispose();
            }

            await DisposeOwnedAsync().ConfigureAwait(false);
            _partition.Dispose();
            _memory.Dispose();
            _exit.TrySetResult(new VirtualMachineExit { Reason = StopReason.StoppedByHost, Description = "disposed before it ran" });
            SetState(VirtualMachineState.Disposed);
        }
        finally
        {
            _lifecycle.Release();
            _lifecycle.Dispose();
            _resume.Dispose();
        }
    }

    /// <summary>Records the first reason to stop and kicks every vCPU out of the guest. Thread-safe.</summary>
    internal void RequestStop(VirtualMachineExit exit)
    {
        lock (_sync)
        {
            _pendingExit ??= exit;
            _stopRequested = true;
            _resume.Set();
        }

        KickAll();
    }

    private void KickAll()
    {
        foreach (var v in _vcpus)
        {
            v.RequestExit();
        }
    }

    private static async Task PumpSerialInputAsync(Stream input, Serial16550 serial, CancellationToken cancellationToken)
    {
        var buffer = new byte[256];
        while (!cancellationToken.IsCancellationRequested)
        {
            int n = await input.ReadAsync(buffer, cancellationToken).ConfigureAwait(false);
            if (n == 0)
            {
                return;
            }

            await serial.EnqueueInputAsync(buffer.AsMemory(0, n), cancellationToken).ConfigureAwait(false);
        }
    }

    private void SetState(VirtualMachineState state)
    {
        var old = (VirtualMachineState)Interlocked.Exchange(ref _state, (int)state);
        if (old != state)
        {
            LogStateChanged(_logger, _config.Name, old, state);
            StateChanged?.Invoke(this, new VirtualMachineStateChangedEventArgs(old, state));
        }
    }

    private void RequireState(VirtualMachineState required, string action)
    {
        var s = State;
        if (s != required)
        {
            throw new InvalidOperationException($"Cannot {action} the VM '{_config.Name}' while it is {s}; it must be {required}.");
        }
    }

    private void RequireNotRunning()
    {
        ThrowIfDisposed();
        if (State == VirtualMachineState.Running)
        {
            throw new InvalidOperationException($"The VM '{_config.Name}' is running; pause it (PauseAsync) before reading or writing vCPU registers.");
        }
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0 && State == VirtualMachineState.Disposed, this);

    [LoggerMessage(Level = LogLevel.Information, Message = "VM {Name} created on {Backend} ({Reason}), {MemoryMiB} MiB, {Vcpus} vCPU(s)")]
    private static partial void LogCreated(ILogger logger, string name, string backend, string reason, ulong memoryMiB, int vcpus);

    [LoggerMessage(Level = LogLevel.Warning, Message = "VM {Name}: releasing a device resource failed")]
    private static partial void LogDisposeFailed(ILogger logger, Exception exception, string name);

    [LoggerMessage(Level = LogLevel.Debug, Message = "VM {Name}: {Old} -> {New}")]
    private static partial void LogStateChanged(ILogger logger, string name, VirtualMachineState old, VirtualMachineState @new);
}
