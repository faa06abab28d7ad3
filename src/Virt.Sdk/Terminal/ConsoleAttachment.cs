using System.Runtime.InteropServices;
using System.Text;

namespace Virt;

/// <summary>Options of a <see cref="ConsoleAttachment"/>.</summary>
public sealed record ConsoleAttachmentOptions
{
    /// <summary>
    /// The escape character: followed by <c>x</c> it stops the VM, by <c>h</c> it prints help, by itself it sends one
    /// escape character to the guest. Default Ctrl-A (0x01), as in QEMU.
    /// </summary>
    public byte EscapeCharacter { get; init; } = 0x01;

    /// <summary>Put a terminal on standard input in raw mode while attached (default). Without it, the terminal keeps its line discipline.</summary>
    public bool RawMode { get; init; } = true;

    /// <summary>Where the attachment writes its own messages (help, "stopping"). Default: standard error.</summary>
    public TextWriter? Messages { get; init; }
}

/// <summary>
/// Connects the process's standard input to a VM's serial console the way a terminal emulator would. When standard input is
/// a terminal, it is put in raw mode for the session (no host echo or line editing; Ctrl-C, Ctrl-Z, Ctrl-D, arrow keys
/// and pastes reach the guest as bytes) and restored on every way out: <see cref="DisposeAsync"/>, the VM stopping,
/// SIGTERM, SIGHUP or SIGQUIT, and process exit. An escape sequence (Ctrl-A x) stops the VM; Ctrl-A h prints help.
/// When standard input is not a terminal (a pipe, a file, CI), bytes pass through unchanged and there are no escapes.
/// </summary>
/// <example>
/// <code>
/// var terminal = ConsoleAttachment.Create();
/// await using var vm = VirtualMachine.CreateBuilder()
///     .WithLinuxKernel(kernel).WithInitrd(initrd)
///     .WithKernelCommandLine("quiet " + terminal.GuestKernelParameters)
///     .WithSerialConsole(Console.OpenStandardOutput())
///     .Build();
/// await using (await terminal.AttachAsync(vm))
/// {
///     await vm.RunAsync();
/// }
/// </code>
/// </example>
public sealed class ConsoleAttachment : IAsyncDisposable
{
    private readonly ConsoleAttachmentOptions _options;
    private readonly ConsoleEscapes _escapes;
    private readonly Lock _lock = new();
    private readonly CancellationTokenSource _stop = new();
    private readonly List<PosixSignalRegistration> _signals = [];
    private byte[]? _savedTermios;
    private uint? _savedWindowsMode;
    private Task? _pump;
    private VirtualMachine? _vm;
    private int _disposed;

    private ConsoleAttachment(ConsoleAttachmentOptions options)
    {
        _options = options;
        _escapes = new ConsoleEscapes(options.EscapeCharacter);
        IsTerminal = DetectTerminal();
    }

    /// <summary>Whether standard input is a terminal (raw mode and escapes apply only then).</summary>
    public bool IsTerminal { get; }

    /// <summary>Whether the terminal is in raw mode now.</summary>
    public bool IsRaw
    {
        get
        {
            lock (_lock)
            {
                return _savedTermios is not null || _savedWindowsMode is not null;
            }
        }
    }

    /// <summary>
    /// Kernel command line parameters that tell the guest kit's shell the terminal's size and type
    /// (<c>virt.tty=ROWSxCOLS virt.term=TERM</c>), or an empty string when standard input is not a terminal. The serial
    /// line cannot carry later size changes; run <c>stty rows R cols C</c> in the guest after resizing.
    /// </summary>
    public string GuestKernelParameters
    {
        get
        {
            if (!IsTerminal)
            {
                return "";
            }

            var parts = new List<string>();
            if (WindowSize() is { } size)
            {
                parts.Add($"virt.tty={size.Rows}x{size.Columns}");
            }

            string? term = Environment.GetEnvironmentVariable("TERM");
            if (!string.IsNullOrEmpty(term) && term.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.'))
            {
                parts.Add($"virt.term={term}");
            }

            return string.Join(' ', parts);
        }
    }

    /// <summary>A task that completes when the attachment stops forwarding input (detached, or standard input ended).</summary>
    public Task Completion => _pump ?? Task.CompletedTask;

    /// <summary>Creates an attachment for the process's standard input; nothing changes until <see cref="AttachAsync"/>.</summary>
    public static ConsoleAttachment Create(ConsoleAttachmentOptions? options = null) => new(options ?? new ConsoleAttachmentOptions());

    /// <summary>
    /// Starts forwarding standard input to <paramref name="vm"/>'s serial console, with the terminal in raw mode when it
    /// is one. Dispose the returned attachment (or let the VM stop) to restore the terminal.
    /// </summary>
    /// <exception cref="InvalidOperationException">Already attached, or the VM has no serial console.</exception>
    public Task<ConsoleAttachment> AttachAsync(VirtualMachine vm, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(vm);
        cancellationToken.ThrowIfCancellationRequested();
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        lock (_lock)
        {
            if (_vm is not null)
            {
                throw new InvalidOperationException("This console attachment is already attached to a VM; create another one.");
            }

            _vm = vm;
        }

        if (IsTerminal && _options.RawMode)
        {
            EnterRawMode();
            if (!OperatingSystem.IsWindows())
            {
                foreach (var signal in new[] { PosixSignal.SIGTERM, PosixSignal.SIGHUP, PosixSignal.SIGQUIT })
                {
                    _signals.Add(PosixSignalRegistration.Create(signal, _ => Restore()));
                }

                _signals.Add(PosixSignalRegistration.Create(PosixSignal.SIGCONT, _ =>
                {
                    if (Volatile.Read(ref _disposed) == 0)
                    {
                        EnterRawMode(); // after a stop from outside (kill -STOP), the shell may have reset the terminal
                    }
                }));
            }

            AppDomain.CurrentDomain.ProcessExit += OnProcessExit;
        }

        _pump = Task.Factory.StartNew(() => PumpAsync(vm), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default).Unwrap();
        _ = vm.WaitForExitAsync(CancellationToken.None).ContinueWith(_ => Restore(), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        return Task.FromResult(this);
    }

    /// <summary>Stops forwarding input and restores the terminal. Does not stop the VM.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        await _stop.CancelAsync().ConfigureAwait(false);
        if (_pump is { } pump)
        {
            try
            {
                await pump.ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or InvalidOperationException or ObjectDisposedException)
            {
                // The VM went away while input was in flight.
            }
        }

        Restore();
        foreach (var s in _signals)
        {
            s.Dispose();
        }

        AppDomain.CurrentDomain.ProcessExit -= OnProcessExit;
        _stop.Dispose();
    }

    private void OnProcessExit(object? sender, EventArgs e) => Restore();

    private async Task PumpAsync(VirtualMachine vm)
    {
        var buffer = new byte[4096];
        var toGuest = new List<byte>(4096);
        var token = _stop.Token;
        var stdin = OperatingSystem.IsWindows() ? Console.OpenStandardInput() : null;
        while (!token.IsCancellationRequested)
        {
            int n = stdin is null ? ReadUnix(buffer, token) : await stdin.ReadAsync(buffer, token).ConfigureAwait(false);
            if (n <= 0)
            {
                return; // end of input (or detached)
            }

            if (!IsTerminal)
            {
                await vm.WriteToSerialConsoleAsync(buffer.AsMemory(0, n), token).ConfigureAwait(false);
                continue;
            }

            int offset = 0;
            while (offset < n)
            {
                toGuest.Clear();
                var command = _escapes.Process(buffer.AsSpan(offset, n - offset), toGuest, out int used);
                offset += used;
                if (toGuest.Count > 0)
                {
                    await vm.WriteToSerialConsoleAsync(toGuest.ToArray(), token).ConfigureAwait(false);
                }

                switch (command)
                {
                    case ConsoleCommand.Exit:
                        Message("\r\n[virt: stopping the VM]\r\n");
                        await vm.StopAsync(CancellationToken.None).ConfigureAwait(false);
                        return;
                    case ConsoleCommand.Help:
                        Message(_escapes.HelpText());
                        break;
                }
            }
        }
    }

    /// <summary>Reads standard input, waking every 100 ms to notice a detach; 0 at end of input or when detached.</summary>
    private static unsafe int ReadUnix(byte[] buffer, CancellationToken token)
    {
        var fd = new TerminalInterop.PollFd { Fd = TerminalInterop.StandardInput, Events = TerminalInterop.POLLIN };
        while (!token.IsCancellationRequested)
        {
            int ready = TerminalInterop.Poll(&fd, 1, 100);
            if (ready < 0 && Marshal.GetLastPInvokeError() == TerminalInterop.EINTR)
            {
                continue;
            }

            if (ready <= 0)
            {
                if (ready < 0)
                {
                    return 0;
                }

                continue;
            }

            fixed (byte* p = buffer)
            {
                nint n = TerminalInterop.Read(TerminalInterop.StandardInput, p, (nuint)buffer.Length);
                if (n < 0 && Marshal.GetLastPInvokeError() is TerminalInterop.EINTR or TerminalInterop.EAGAIN)
                {
                    continue;
                }

                return (int)Math.Max(0, n);
            }
        }

        return 0;
    }

    private void Message(string text)
    {
        var w = _options.Messages ?? Console.Error;
        w.Write(text);
        w.Flush();
    }

    private static bool DetectTerminal()
    {
        if (OperatingSystem.IsWindows())
        {
            return !Console.IsInputRedirected;
        }

        return (OperatingSystem.IsLinux() || OperatingSystem.IsMacOS() || OperatingSystem.IsFreeBSD())
            && TerminalInterop.IsATty(TerminalInterop.StandardInput) == 1;
    }

    private static unsafe (int Rows, int Columns)? WindowSize()
    {
        if (OperatingSystem.IsWindows())
        {
            return Console.IsOutputRedirected ? null : (Console.WindowHeight, Console.WindowWidth);
        }

        ushort* ws = stackalloc ushort[4];
        foreach (int fd in new[] { TerminalInterop.StandardOutput, TerminalInterop.StandardInput })
        {
            if (TerminalInterop.Ioctl(fd, TerminalInterop.WindowSizeRequest, ws) == 0 && ws[0] > 0 && ws[1] > 0)
            {
                return (ws[0], ws[1]);
            }
        }

        return null;
    }

    private unsafe void EnterRawMode()
    {
        lock (_lock)
        {
            if (OperatingSystem.IsWindows())
            {
                nint handle = TerminalInterop.Windows.GetStdHandle(TerminalInterop.Windows.StdInputHandle);
                if (TerminalInterop.Windows.GetConsoleMode(handle, out uint mode))
                {
                    _savedWindowsMode ??= mode;
                    uint raw = (mode & ~(TerminalInterop.Windows.EnableLineInput | TerminalInterop.Windows.EnableEchoInput | TerminalInterop.Windows.EnableProcessedInput))
                        | TerminalInterop.Windows.EnableVirtualTerminalInput;
                    TerminalInterop.Windows.SetConsoleMode(handle, raw);
                }

                return;
            }

            var current = new byte[TerminalInterop.TermiosBufferSize];
            fixed (byte* t = current)
            {
                if (TerminalInterop.TcGetAttr(TerminalInterop.StandardInput, t) != 0)
                {
                    return; // not a terminal after all: leave it alone
                }

                _savedTermios ??= (byte[])current.Clone();
                TerminalInterop.CfMakeRaw(t);

                // Keep output processing (NL to CR NL) so that host messages and guest output lay out as before.
                if (OperatingSystem.IsMacOS())
                {
                    ((ulong*)t)[1] |= 0x1 | 0x2; // OPOST | ONLCR (tcflag_t is 64-bit there)
                }
                else
                {
                    ((uint*)t)[1] |= 0x1 | 0x4; // OPOST | ONLCR
                }

                TerminalInterop.TcSetAttr(TerminalInterop.StandardInput, TerminalInterop.TCSANOW, t);
            }
        }
    }

    private unsafe void Restore()
    {
        lock (_lock)
        {
            if (_savedWindowsMode is { } mode)
            {
                TerminalInterop.Windows.SetConsoleMode(TerminalInterop.Windows.GetStdHandle(TerminalInterop.Windows.StdInputHandle), mode);
                _savedWindowsMode = null;
            }

            if (_savedTermios is { } saved)
            {
                fixed (byte* t = saved)
                {
                    TerminalInterop.TcSetAttr(TerminalInterop.StandardInput, TerminalInterop.TCSANOW, t);
                }

                _savedTermios = null;
            }
        }
    }

    /// <inheritdoc />
    public override string ToString() =>
        new StringBuilder("console attachment (").Append(IsTerminal ? "terminal" : "not a terminal").Append(IsRaw ? ", raw" : "").Append(')').ToString();
}
