using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Virt.Cpu;
using Virt.Devices;
using Virt.Memory;

namespace Virt;

/// <summary>
/// An x86-64 virtual machine running in this process. Lifecycle:
/// <see cref="VirtualMachineState.Created"/> -> <see cref="VirtualMachineState.Running"/> &lt;-&gt;
/// <see cref="VirtualMachineState.Paused"/> -> <see cref="VirtualMachineState.Stopped"/> ->
/// <see cref="VirtualMachineState.Disposed"/>. Create one with <see cref="CreateBuilder"/>. A stopped VM starts again
/// from a cold reset (Stopped -> Created -> Running; see <see cref="ResetAsync"/>).
/// </summary>
/// <remarks>
/// Each vCPU runs on its own host thread, which dispatches the guest's port-I/O and MMIO accesses to the
/// devices synchronously. Lifecycle methods are thread-safe and serialized.
/// </remarks>
public sealed partial class VirtualMachine : IAsyncDisposable
{
    private readonly VirtualMachineConfiguration _config;
    // Replaced together by a cold reset (ResetAsync), with the VM stopped and no vCPU thread left.
    private AssembledMachine _machine;
    private IVirtualCpu[] _vcpus;
    private PortIoBus _ports;
    private MmioBus _mmio;
    private Serial16550? _serial;
    private readonly ILogger _logger;
    private readonly SemaphoreSlim _lifecycle = new(1, 1);
    private readonly Lock _sync = new();
    private TaskCompletionSource<VirtualMachineExit> _exit = new(TaskCreationOptions.RunContinuationsAsynchronously);
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

    private VirtualMachine(VirtualMachineConfiguration config, BackendSelection selection, AssembledMachine machine, ILogger logger)
    {
        _config = config;
        BackendSelection = selection;
        _machine = machine;
        _vcpus = machine.Vcpus;
        _ports = machine.Ports;
        _mmio = machine.Mmio;
        _serial = machine.Serial;
        _logger = logger;
        machine.StopRequests.Connect(RequestStop);
    }

    /// <summary>Creates a builder with the defaults (64 MiB, one vCPU, <see cref="BackendKind.Auto"/>).</summary>
    public static VirtualMachineBuilder CreateBuilder() => new();

    /// <summary>The VM's name.</summary>
    public string Name => _config.Name;

    /// <summary>The current lifecycle state.</summary>
    public VirtualMachineState State => (VirtualMachineState)Volatile.Read(ref _state);

    /// <summary>The backend running this VM and why it was chosen.</summary>
    public BackendSelection BackendSelection { get; }

    /// <summary>
    /// Guest physical memory (RAM at 0). Safe to read and write while the VM is not running. A cold reset
    /// (<see cref="ResetAsync"/>, or starting a stopped VM) replaces it: read this property again afterwards.
    /// </summary>
    public IGuestMemory Memory => _machine.Memory;

    /// <summary>The number of vCPUs.</summary>
    public int VcpuCount => _vcpus.Length;

    /// <summary>How the VM stopped, once it has (until a cold reset); otherwise <see langword="null"/>.</summary>
    public VirtualMachineExit? Exit => _exit.Task.IsCompletedSuccessfully ? _exit.Task.Result : null;

    /// <summary>Raised after every state change, on the thread that made it (possibly a vCPU thread).</summary>
    public event EventHandler<VirtualMachineStateChangedEventArgs>? StateChanged;

    internal PortIoBus PortBus => _ports;

    internal MmioBus MmioBus => _mmio;

    internal IPartition Partition => _machine.Partition;

    /// <summary>Assembles the machine <paramref name="config"/> describes and wraps it in its lifecycle.</summary>
    internal static VirtualMachine Create(VirtualMachineConfiguration config, BackendSelection selection, DeviceManager devices)
    {
        var logger = config.LoggerFactory?.CreateLogger("Virt.VirtualMachine") ?? NullLogger.Instance;
        var share = MachineShare.Admit(config);
        AssembledMachine machine;
        try
        {
            machine = MachineAssembler.Assemble(config, selection, devices, logger);
        }
        catch
        {
            share.Dispose();
            throw;
        }

        VirtualMachineDiagnostics.LogCreated(logger, config.Name, selection.Name, selection.Reason, config.MemorySize >> 20, config.VcpuCount);
        var vm = new VirtualMachine(config, selection, machine, logger);
        vm._share = share.Join(machine);
        return vm;
    }

    /// <summary>For Linux guests: the full kernel command line the VM passed (with console and device parameters); otherwise <see langword="null"/>.</summary>
    public string? KernelCommandLine => _machine.KernelCommandLine;

    /// <summary>The default stack top of vCPU 0 when the registers do not set RSP (vCPU i gets 256 bytes less per index).</summary>
    public const ulong DefaultStackTop = 0x8FF0;

    /// <summary>
    /// The devices added with <see cref="VirtualMachineBuilder.WithDevice{TDevice}"/>, <see cref="VirtualMachineBuilder.WithPortIoDevice"/>
    /// and <see cref="VirtualMachineBuilder.WithMmioDevice"/>: the ports, MMIO window and interrupt line each got, in the order
    /// they were added. Virtio devices are in <see cref="VirtioDevices"/>.
    /// </summary>
    public IReadOnlyList<DevicePlacement> Devices => _machine.Devices;

    /// <summary>The VM's virtio devices: kind, MMIO window and interrupt line, in the order they were added.</summary>
    public IReadOnlyList<VirtioDeviceInfo> VirtioDevices => _machine.VirtioDevices;

    /// <summary>
    /// The <c>virtio_mmio.device=...</c> parameters a Linux guest needs to find the VM's virtio devices,
    /// separated by spaces (empty without virtio devices).
    /// </summary>
    public string KernelCommandLineFragments => string.Join(' ', _machine.VirtioDevices.Select(v => v.KernelCommandLineFragment));

    /// <summary>
    /// Starts the vCPUs. The VM must be <see cref="VirtualMachineState.Created"/>, or
    /// <see cref="VirtualMachineState.Stopped"/>: a stopped VM is reset cold first (<see cref="ResetAsync"/>) and starts
    /// from its initial state.
    /// </summary>
    /// <exception cref="InvalidOperationException">The VM is running or paused, or it is stopped and cannot be reset
    /// (restored from a snapshot); the message says why.</exception>
    public async Task StartAsync(CancellationToken cancellationToken = default)
    {
        await EnterLifecycleAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            ThrowIfDisposed();
            if (State == VirtualMachineState.Stopped && !_restoredNotStarted)
            {
                await ResetCoreAsync().ConfigureAwait(false);
            }

            if (!_restoredNotStarted)
            {
                RequireState(VirtualMachineState.Created, "start");
            }

            StartThreads();
        }
        finally
        {
            _lifecycle.Release();
        }
    }

    /// <summary>Starts the vCPU threads (and the serial input pump) and moves the VM to Running.</summary>
    private void StartThreads()
    {
        {
            _restoredNotStarted = false;
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

            VirtualMachineDiagnostics.RecordStart(this, _config.Name, BackendSelection.Name, _vcpus.Length);
            SetState(VirtualMachineState.Running);
            foreach (var t in _threads)
            {
                t.Start();
            }
        }
    }

    /// <summary>Parks every vCPU between two guest instructions. Completes when all are parked.</summary>
    /// <exception cref="InvalidOperationException">The VM is not running.</exception>
    public async Task PauseAsync(CancellationToken cancellationToken = default)
    {
        await EnterLifecycleAsync(cancellationToken).ConfigureAwait(false);
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
        await EnterLifecycleAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            ThrowIfDisposed();
            RequireState(VirtualMachineState.Paused, "resume");

            // Virtio devices a migration left quiesced serve the guest again.
            _machine.ResumeDevices();
            if (_restoredNotStarted)
            {
                StartThreads();
                return;
            }

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
        await EnterLifecycleAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            ThrowIfDisposed();
            if (State == VirtualMachineState.Created || _restoredNotStarted)
            {
                // No vCPU thread runs yet (a new VM, or one restored and not resumed): nothing to wait for.
                _restoredNotStarted = false;
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

    /// <summary>
    /// Waits until the VM stops and returns why (for a stopped VM, how its last run ended). Cancelling the token stops
    /// the waiting, not the VM.
    /// </summary>
    public Task<VirtualMachineExit> WaitForExitAsync(CancellationToken cancellationToken = default) =>
        _exit.Task.WaitAsync(cancellationToken);

    /// <summary>
    /// Resets a stopped VM cold, to the state <see cref="VirtualMachineBuilder.Build"/> left it in: guest memory is
    /// reloaded from the images, kernel and initial RAM disk it was built with, every device is created again (disk
    /// images reopened, user networks and their forwards bound again), and the vCPUs are new, at their start state.
    /// The VM moves Stopped -> Created and <see cref="Exit"/> becomes null. <see cref="StartAsync"/> and
    /// <see cref="RunAsync"/> do this themselves for a stopped VM; call it to inspect or change the initial state first.
    /// Does nothing to a VM that is Created.
    /// </summary>
    /// <exception cref="InvalidOperationException">The VM is running or paused, or it was restored from a snapshot
    /// (its state was read once): the message says why.</exception>
    public async Task ResetAsync(CancellationToken cancellationToken = default)
    {
        await EnterLifecycleAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            ThrowIfDisposed();
            if (State == VirtualMachineState.Created && !_restoredNotStarted)
            {
                return;
            }

            if (_restoredNotStarted)
            {
                throw new InvalidOperationException($"The VM '{Name}' cannot be reset: {MachineReset.WhyNot(_config)}.");
            }

            RequireState(VirtualMachineState.Stopped, "reset");
            await ResetCoreAsync().ConfigureAwait(false);
        }
        finally
        {
            _lifecycle.Release();
        }
    }

    /// <summary>Under the lifecycle lock, with the VM stopped: replaces the machine with a new one and returns to Created.</summary>
    private async Task ResetCoreAsync()
    {
        foreach (var t in _threads)
        {
            t.Join();
        }

        await StopHostTasksAsync().ConfigureAwait(false);
        var machine = await MachineReset.ReassembleAsync(_config, BackendSelection, _machine, _logger).ConfigureAwait(false);
        _machine = machine;
        _vcpus = machine.Vcpus;
        _ports = machine.Ports;
        _mmio = machine.Mmio;
        _serial = machine.Serial;
        machine.StopRequests.Connect(RequestStop);
        _share = _share.Join(machine);
        lock (_sync)
        {
            _threads = [];
            _pendingExit = null;
            _stopRequested = false;
            _pauseRequested = false;
            _allParked = null;
            _parkedThreads = 0;
            _liveThreads = 0;
            _exit = new TaskCompletionSource<VirtualMachineExit>(TaskCreationOptions.RunContinuationsAsynchronously);
            _resume.Set();
        }

        VirtualMachineDiagnostics.LogReset(_logger, _config.Name);
        SetState(VirtualMachineState.Created);
    }

    /// <summary>Stops the serial input pump and whatever else runs on the host for the current run.</summary>
    private async Task StopHostTasksAsync()
    {
        if (_hostTasks is null)
        {
            return;
        }

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
        _hostTasks = null;
        _serialPump = null;
    }

    /// <summary>
    /// Starts the VM and waits until it stops. Cancelling <paramref name="cancellationToken"/> stops the VM; the
    /// result then says <see cref="StopReason.Cancelled"/> (no exception is thrown for that: the VM ran, and the
    /// result says how far). A token that is already cancelled when the call is made starts nothing and throws
    /// <see cref="OperationCanceledException"/>, as every other lifecycle call does; the VM stays as it was.
    /// </summary>
    /// <exception cref="OperationCanceledException">The token was cancelled before the VM started.</exception>
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
            if ((State is VirtualMachineState.Running or VirtualMachineState.Paused) && !_restoredNotStarted)
            {
                RequestStop(new VirtualMachineExit { Reason = StopReason.StoppedByHost, Description = "stopped because the VM was disposed" });
                await _exit.Task.ConfigureAwait(false);
            }

            foreach (var t in _threads)
            {
                t.Join();
            }

            await StopHostTasksAsync().ConfigureAwait(false);
            _share.Dispose();
            await _machine.Resources.DisposeAsync().ConfigureAwait(false);
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
        _share.WakeAll();
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
            VirtualMachineDiagnostics.LogStateChanged(_logger, _config.Name, old, state);
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

    private void ThrowIfDisposed()
    {
        if (Volatile.Read(ref _disposed) != 0 && State == VirtualMachineState.Disposed)
        {
            throw DisposedException();
        }
    }

    /// <summary>Takes the lifecycle lock; a VM disposed before or while waiting is reported by its name, not as the lock.</summary>
    private async Task EnterLifecycleAsync(CancellationToken cancellationToken)
    {
        if (Volatile.Read(ref _disposed) != 0)
        {
            throw DisposedException();
        }

        try
        {
            await _lifecycle.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (ObjectDisposedException)
        {
            throw DisposedException();
        }
    }

    private ObjectDisposedException DisposedException() =>
        new($"VirtualMachine '{Name}'", $"The VM '{Name}' has been disposed. Build a new one with VirtualMachine.CreateBuilder() (or restore a snapshot) to run the guest again.");
}
