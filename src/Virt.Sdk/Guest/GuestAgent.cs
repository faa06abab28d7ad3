using System.Buffers.Binary;
using System.Text;
using Virt.Devices.Virtio;

namespace Virt;

/// <summary>
/// The host side of the guest kit's agent (<c>/bin/virt-agent</c>, started by <c>/init</c> when the kernel command
/// line says <c>virt.agent=PORT</c>): runs commands in the guest and copies files in and out, over vsock. Get it from
/// <c>vm.Agent</c> of a VM built with <see cref="VirtualMachineBuilder.WithGuestAgent"/>.
/// </summary>
/// <remarks>
/// <para>
/// The agent announces itself by connecting to the same port on the host once it listens; <see cref="WaitAsync"/>
/// completes then. Every request is a connection of its own, so requests run concurrently. Commands run as root with
/// the agent's environment (PATH=/bin:/sbin) plus <see cref="GuestCommand.Environment"/>.
/// </para>
/// <para>
/// Failures: <see cref="GuestAgentException"/> when the agent refuses a request (a file it cannot open) or the
/// connection ends mid-answer; <see cref="IOException"/> when no agent listens (not started yet: call
/// <see cref="WaitAsync"/> first). Cancelling an exec closes its connection, and the agent kills the command.
/// </para>
/// </remarks>
public sealed class GuestAgent : IAsyncDisposable
{
    /// <summary>The vsock port the agent listens on unless told otherwise.</summary>
    public const uint DefaultPort = 1024;

    private static readonly TimeSpan AnnouncementTimeout = TimeSpan.FromSeconds(10);

    private readonly VirtioVsockDevice _vsock;
    private readonly VsockListener _announcements;
    private readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _acceptLoop;

    internal GuestAgent(VirtioVsockDevice vsock, uint port)
    {
        _vsock = vsock;
        Port = port;
        _announcements = vsock.Listen(port);
        _acceptLoop = AcceptAnnouncementsAsync();
    }

    /// <summary>The vsock port of the agent in the guest (and of its announcement on the host).</summary>
    public uint Port { get; }

    /// <summary>Whether the agent has announced itself.</summary>
    public bool IsReady => _ready.Task.IsCompleted;

    /// <summary>Completes when the agent in the guest listens (it announces itself once it does).</summary>
    /// <param name="cancellationToken">Cancels the wait (e.g. a timeout: a guest without the agent never announces it).</param>
    public Task WaitAsync(CancellationToken cancellationToken = default) => _ready.Task.WaitAsync(cancellationToken);

    /// <summary>Runs <paramref name="fileName"/> in the guest and collects its output.</summary>
    /// <param name="fileName">The program: a path or a name found in PATH.</param>
    /// <param name="arguments">Its arguments.</param>
    /// <param name="standardInput">Its standard input (UTF-8), or null for none.</param>
    /// <param name="cancellationToken">Cancels the command (the agent kills it).</param>
    /// <returns>The exit code and the output.</returns>
    public async Task<GuestExecResult> ExecAsync(string fileName, IEnumerable<string>? arguments = null, string? standardInput = null, CancellationToken cancellationToken = default)
    {
        using var stdout = new MemoryStream();
        using var stderr = new MemoryStream();
        using var stdin = standardInput is null ? null : new MemoryStream(Encoding.UTF8.GetBytes(standardInput));
        int code = await ExecAsync(
            new GuestCommand
            {
                FileName = fileName,
                Arguments = arguments is null ? [] : [.. arguments],
                StandardInput = stdin,
                StandardOutput = stdout,
                StandardError = stderr,
            },
            cancellationToken).ConfigureAwait(false);
        return new GuestExecResult(code, Encoding.UTF8.GetString(stdout.GetBuffer(), 0, (int)stdout.Length), Encoding.UTF8.GetString(stderr.GetBuffer(), 0, (int)stderr.Length));
    }

    /// <summary>Runs a command in the guest, streaming its input and output.</summary>
    /// <param name="command">What to run and where its input comes from and output goes.</param>
    /// <param name="cancellationToken">Cancels the command (the agent kills it).</param>
    /// <returns>The exit status: 128 + N when signal N ended it, 127 when the program could not be started.</returns>
    /// <exception cref="ArgumentException">The file name is empty, or a string holds a NUL character.</exception>
    public async Task<int> ExecAsync(GuestCommand command, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(command);
        ArgumentException.ThrowIfNullOrEmpty(command.FileName);
        byte[] request = EncodeExec(command);
        var channel = await OpenAsync(cancellationToken).ConfigureAwait(false);
        await using (channel.ConfigureAwait(false))
        {
            await channel.WriteFrameAsync(GuestAgentProtocol.Exec, request, cancellationToken).ConfigureAwait(false);
            using var feeding = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            var stdin = FeedStandardInputAsync(channel, command.StandardInput, feeding.Token);
            try
            {
                return await ReadExecOutputAsync(channel, command, cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                // A command may exit without reading all its input.
                await feeding.CancelAsync().ConfigureAwait(false);
                await stdin.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            }
        }
    }

    /// <summary>Writes the contents of <paramref name="source"/> (read to its end) to <paramref name="guestPath"/> in the guest, replacing the file.</summary>
    /// <param name="source">The bytes to copy.</param>
    /// <param name="guestPath">An absolute path in the guest; its directory must exist.</param>
    /// <param name="mode">The file's permissions when it is created (default rw-r--r--).</param>
    /// <param name="cancellationToken">Cancels the copy.</param>
    /// <exception cref="GuestAgentException">The agent could not write the file (the message says why).</exception>
    public async Task CopyToGuestAsync(Stream source, string guestPath, UnixFileMode? mode = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentException.ThrowIfNullOrEmpty(guestPath);
        using var request = new MemoryStream();
        Span<byte> modeBytes = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(modeBytes, (uint)(mode ?? (UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead)));
        request.Write(modeBytes);
        GuestAgentProtocol.WriteString(request, guestPath);
        var channel = await OpenAsync(cancellationToken).ConfigureAwait(false);
        await using (channel.ConfigureAwait(false))
        {
            await channel.WriteFrameAsync(GuestAgentProtocol.Put, request.ToArray(), cancellationToken).ConfigureAwait(false);
            byte[] chunk = new byte[GuestAgentProtocol.ChunkSize];
            int n;
            while ((n = await source.ReadAsync(chunk, cancellationToken).ConfigureAwait(false)) > 0)
            {
                await channel.WriteFrameAsync(GuestAgentProtocol.Data, chunk.AsMemory(0, n), cancellationToken).ConfigureAwait(false);
            }

            await channel.WriteFrameAsync(GuestAgentProtocol.Data, ReadOnlyMemory<byte>.Empty, cancellationToken).ConfigureAwait(false);
            var (type, length) = await channel.ReadFrameAsync(cancellationToken).ConfigureAwait(false);
            ThrowUnlessOk(channel, type, length, $"write {guestPath}");
        }
    }

    /// <summary>Copies the guest file <paramref name="guestPath"/> into <paramref name="destination"/>.</summary>
    /// <param name="guestPath">An absolute path in the guest.</param>
    /// <param name="destination">Receives the file's bytes.</param>
    /// <param name="cancellationToken">Cancels the copy.</param>
    /// <exception cref="GuestAgentException">The agent could not read the file (the message says why).</exception>
    public async Task CopyFromGuestAsync(string guestPath, Stream destination, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(guestPath);
        ArgumentNullException.ThrowIfNull(destination);
        using var request = new MemoryStream();
        GuestAgentProtocol.WriteString(request, guestPath);
        var channel = await OpenAsync(cancellationToken).ConfigureAwait(false);
        await using (channel.ConfigureAwait(false))
        {
            await channel.WriteFrameAsync(GuestAgentProtocol.Get, request.ToArray(), cancellationToken).ConfigureAwait(false);
            while (true)
            {
                var (type, length) = await channel.ReadFrameAsync(cancellationToken).ConfigureAwait(false);
                if (type != GuestAgentProtocol.Data || length == 0)
                {
                    if (type == GuestAgentProtocol.Data)
                    {
                        (type, length) = await channel.ReadFrameAsync(cancellationToken).ConfigureAwait(false);
                    }

                    ThrowUnlessOk(channel, type, length, $"read {guestPath}");
                    return;
                }

                await destination.WriteAsync(channel.Payload.AsMemory(0, length), cancellationToken).ConfigureAwait(false);
            }
        }
    }

    /// <summary>Stops waiting for announcements.</summary>
    public async ValueTask DisposeAsync()
    {
        if (_stop.IsCancellationRequested)
        {
            return;
        }

        await _stop.CancelAsync().ConfigureAwait(false);
        _announcements.Dispose();
        await _acceptLoop.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        _stop.Dispose();
    }

    private async Task<GuestAgentChannel> OpenAsync(CancellationToken cancellationToken) =>
        new(await _vsock.ConnectAsync(Port, cancellationToken).ConfigureAwait(false));

    private static byte[] EncodeExec(GuestCommand command)
    {
        using var request = new MemoryStream();
        GuestAgentProtocol.WriteStrings(request, [command.FileName, .. command.Arguments]);
        GuestAgentProtocol.WriteStrings(request, command.Environment is null ? [] : [.. command.Environment.Select(kv => CheckVariable(kv.Key) + "=" + kv.Value)]);
        if (request.Length > GuestAgentProtocol.MaxPayload)
        {
            throw new ArgumentException($"The command line and environment take {request.Length} bytes; the agent accepts at most {GuestAgentProtocol.MaxPayload}. Pass large data through standard input or a file.", nameof(command));
        }

        return request.ToArray();
    }

    private static string CheckVariable(string name) =>
        string.IsNullOrEmpty(name) || name.Contains('=', StringComparison.Ordinal)
            ? throw new ArgumentException($"'{name}' is not an environment variable name (empty, or it contains '=').")
            : name;

    private static async Task FeedStandardInputAsync(GuestAgentChannel channel, Stream? input, CancellationToken cancellationToken)
    {
        if (input is not null)
        {
            byte[] chunk = new byte[GuestAgentProtocol.ChunkSize];
            int n;
            while ((n = await input.ReadAsync(chunk, cancellationToken).ConfigureAwait(false)) > 0)
            {
                await channel.WriteFrameAsync(GuestAgentProtocol.Stdin, chunk.AsMemory(0, n), cancellationToken).ConfigureAwait(false);
            }
        }

        await channel.WriteFrameAsync(GuestAgentProtocol.Stdin, ReadOnlyMemory<byte>.Empty, cancellationToken).ConfigureAwait(false);
    }

    private static async Task<int> ReadExecOutputAsync(GuestAgentChannel channel, GuestCommand command, CancellationToken cancellationToken)
    {
        while (true)
        {
            var (type, length) = await channel.ReadFrameAsync(cancellationToken).ConfigureAwait(false);
            switch (type)
            {
                case GuestAgentProtocol.Stdout when command.StandardOutput is { } stdout:
                    await stdout.WriteAsync(channel.Payload.AsMemory(0, length), cancellationToken).ConfigureAwait(false);
                    break;
                case GuestAgentProtocol.Stderr when command.StandardError is { } stderr:
                    await stderr.WriteAsync(channel.Payload.AsMemory(0, length), cancellationToken).ConfigureAwait(false);
                    break;
                case GuestAgentProtocol.Stdout or GuestAgentProtocol.Stderr:
                    break;
                case GuestAgentProtocol.ExitStatus when length == 4:
                    return BinaryPrimitives.ReadInt32LittleEndian(channel.Payload);
                case GuestAgentProtocol.Failure:
                    throw new GuestAgentException($"The guest agent could not run {command.FileName}: {channel.FailureMessage(length)}");
                default:
                    throw new GuestAgentException($"The guest agent answered an exec with frame '{(char)type}' of {length} bytes.");
            }
        }
    }

    private static void ThrowUnlessOk(GuestAgentChannel channel, byte type, int length, string what)
    {
        if (type == GuestAgentProtocol.Failure)
        {
            throw new GuestAgentException($"The guest agent could not {what}: {channel.FailureMessage(length)}");
        }

        if (type != GuestAgentProtocol.Ok)
        {
            throw new GuestAgentException($"The guest agent answered '{(char)type}' ({length} bytes) where it should confirm it could {what}.");
        }
    }

    private async Task AcceptAnnouncementsAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            VsockStream stream;
            try
            {
                stream = await _announcements.AcceptAsync(_stop.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException)
            {
                return;
            }

            await using (stream.ConfigureAwait(false))
            {
                using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
                timeout.CancelAfter(AnnouncementTimeout);
                try
                {
                    var channel = new GuestAgentChannel(stream);
                    var (type, _) = await channel.ReadFrameAsync(timeout.Token).ConfigureAwait(false);
                    if (type == GuestAgentProtocol.Hello)
                    {
                        _ready.TrySetResult();
                    }
                }
                catch (Exception e) when (e is OperationCanceledException or IOException or GuestAgentException)
                {
                    // Not an announcement; the next connection may be.
                }
            }
        }
    }
}
