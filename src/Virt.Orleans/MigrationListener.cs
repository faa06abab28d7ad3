using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Orleans;
using Orleans.Runtime;

namespace Virt.Orleans;

/// <summary>
/// A VM received by live migration, waiting for its grain to activate on this silo and claim it; <c>ResumedAt</c> is
/// when the guest was resumed here on arrival (a Stopwatch timestamp), or null if it waits paused for its grain.
/// </summary>
internal sealed record IncomingVirtualMachine(VirtualMachine Machine, SerialRelay Serial, GrainDiskSet Disks, long ReceivedAt, long? ResumedAt);

/// <summary>
/// The receiving end of live migrations: a TCP listener on the silo. A source grain asks this silo's host grain for a
/// ticket (<see cref="Expect"/>), connects, presents the ticket's one-time token, and streams the VM
/// (<see cref="VirtualMachine.MigrateAsync"/>); the VM is rebuilt here with the silo's parts, paused, and kept for the
/// grain's activation on this silo to claim (<see cref="Claim"/>). One byte answers the sender: 1 when the VM is
/// here, 0 and a UTF-8 reason when it could not be received. Unclaimed VMs are dropped after a while.
/// </summary>
internal sealed partial class MigrationListener : ILifecycleParticipant<ISiloLifecycle>, IDisposable
{
    private static readonly TimeSpan TicketLifetime = TimeSpan.FromMinutes(2);
    private readonly ConcurrentDictionary<string, (string Name, VirtualMachineSpec Spec, bool Resume, long IssuedAt)> _tickets = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, IncomingVirtualMachine> _incoming = new(StringComparer.Ordinal);
    private readonly VirtualMachineGrainOptions _options;
    private readonly ILocalSiloDetails _silo;
    private readonly LocalVirtualMachines _local;
    private readonly ILoggerFactory _loggerFactory;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stop = new();
    private TcpListener? _listener;
    private Task? _accepting;

    public MigrationListener(IOptions<VirtualMachineGrainOptions> options, ILocalSiloDetails silo, LocalVirtualMachines local, ILoggerFactory loggerFactory)
    {
        _options = options.Value;
        _silo = silo;
        _local = local;
        _loggerFactory = loggerFactory;
        _logger = loggerFactory.CreateLogger<MigrationListener>();
    }

    public IPEndPoint? Endpoint { get; private set; }

    public void Participate(ISiloLifecycle lifecycle) =>
        lifecycle.Subscribe(nameof(MigrationListener), ServiceLifecycleStage.RuntimeInitialize, StartAsync, _ => StopAsync());

    private Task StartAsync(CancellationToken cancellationToken)
    {
        if (!_options.LiveMigration)
        {
            return Task.CompletedTask;
        }

        var address = _options.MigrationAddress ?? _silo.SiloAddress.Endpoint.Address;
        _listener = new TcpListener(address, _options.MigrationPort);
        _listener.Start();
        Endpoint = (IPEndPoint)_listener.LocalEndpoint;
        _local.MigrationEndpoint = Endpoint.ToString();
        _accepting = Task.Run(AcceptLoopAsync, CancellationToken.None);
        return Task.CompletedTask;
    }

    private async Task StopAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        _listener?.Stop();
        if (_accepting is not null)
        {
            await _accepting.ConfigureAwait(false);
        }

        foreach (var name in _incoming.Keys.ToList())
        {
            Discard(name);
        }
    }

    /// <summary>A ticket for receiving the VM <paramref name="name"/>, built from <paramref name="spec"/> with this silo's parts.</summary>
    public MigrationTicket Expect(string name, VirtualMachineSpec spec, bool resumeOnArrival)
    {
        var endpoint = Endpoint ?? throw new InvalidOperationException($"The silo {_silo.SiloAddress} does not listen for migrations yet.");
        Discard(name);
        byte[] token = RandomNumberGenerator.GetBytes(16);
        _tickets[Convert.ToHexString(token)] = (name, spec, resumeOnArrival, Stopwatch.GetTimestamp());
        return new MigrationTicket(endpoint.Address.ToString(), endpoint.Port, token);
    }

    /// <summary>The VM received for <paramref name="name"/>, now owned by the caller; null if none is waiting.</summary>
    public IncomingVirtualMachine? Claim(string name) => _incoming.TryRemove(name, out var vm) ? vm : null;

    public void Discard(string name)
    {
        if (_incoming.TryRemove(name, out var vm))
        {
            _ = vm.Machine.DisposeAsync().AsTask();
        }
    }

    private async Task AcceptLoopAsync()
    {
        var listener = _listener!;
        while (!_stop.IsCancellationRequested)
        {
            TcpClient client;
            try
            {
                client = await listener.AcceptTcpClientAsync(_stop.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException)
            {
                return;
            }

            _ = Task.Run(() => ReceiveAsync(client), CancellationToken.None);
            Expire();
        }
    }

    private void Expire()
    {
        foreach (var (token, ticket) in _tickets)
        {
            if (Stopwatch.GetElapsedTime(ticket.IssuedAt) > TicketLifetime)
            {
                _tickets.TryRemove(token, out _);
            }
        }

        foreach (var (name, vm) in _incoming)
        {
            if (Stopwatch.GetElapsedTime(vm.ReceivedAt) > TicketLifetime)
            {
                Discard(name);
            }
        }
    }

    private async Task ReceiveAsync(TcpClient client)
    {
        using var _ = client;
        client.NoDelay = true;
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
        deadline.CancelAfter(TicketLifetime);
        var stream = client.GetStream();
        await using (stream.ConfigureAwait(false))
        {
            string? name = null;
            try
            {
                byte[] token = new byte[16];
                await stream.ReadExactlyAsync(token, deadline.Token).ConfigureAwait(false);
                if (!_tickets.TryRemove(Convert.ToHexString(token), out var ticket))
                {
                    LogUnknownToken(_logger, client.Client.RemoteEndPoint?.ToString() ?? "?");
                    return;
                }

                name = ticket.Name;
                var serial = new SerialRelay();

                // Disks are attached when the grain claims the machine: until the source lets go, their layers are its.
                var disks = await GrainDiskSet.DescribeAsync(ticket.Spec).ConfigureAwait(false);
                var vm = await VirtualMachine.ReceiveMigrationAsync(
                    stream,
                    b => MachineParts.Restore(ticket.Spec, b, _options, _loggerFactory, serial, disks),
                    deadline.Token).ConfigureAwait(false);
                long? resumedAt = null;
                if (ticket.Resume)
                {
                    // The guest runs on here at once; its console output waits in the relay for the grain.
                    await vm.ResumeAsync(deadline.Token).ConfigureAwait(false);
                    resumedAt = Stopwatch.GetTimestamp();
                }

                var incoming = new IncomingVirtualMachine(vm, serial, disks, Stopwatch.GetTimestamp(), resumedAt);
                Discard(name);
                _incoming[name] = incoming;
                try
                {
                    await stream.WriteAsync(new byte[] { 1 }, deadline.Token).ConfigureAwait(false);
                    await stream.FlushAsync(deadline.Token).ConfigureAwait(false);
                }
                catch
                {
                    // The sender will not hear that the VM is here, so it runs on there: this copy must not.
                    Discard(name);
                    throw;
                }

                LogReceived(_logger, name);
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                LogReceiveFailed(_logger, ex, name ?? "(no ticket)");
                if (name is not null)
                {
                    try
                    {
                        byte[] reason = Encoding.UTF8.GetBytes(ex.Message);
                        await stream.WriteAsync(new byte[] { 0 }, CancellationToken.None).ConfigureAwait(false);
                        await stream.WriteAsync(reason, CancellationToken.None).ConfigureAwait(false);
                    }
                    catch (IOException)
                    {
                    }
                }
            }
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        _listener?.Stop();
        foreach (var name in _incoming.Keys.ToList())
        {
            Discard(name);
        }
    }

    [LoggerMessage(40, LogLevel.Information, "VM {Name} received by live migration")]
    private static partial void LogReceived(ILogger logger, string name);

    [LoggerMessage(41, LogLevel.Warning, "VM {Name} could not be received by live migration")]
    private static partial void LogReceiveFailed(ILogger logger, Exception exception, string name);

    [LoggerMessage(42, LogLevel.Warning, "A migration connection from {Remote} presented no valid ticket; closed")]
    private static partial void LogUnknownToken(ILogger logger, string remote);
}

/// <summary>The serial console's output stream of a received VM, passed on to the grain's console once the grain claims the VM.</summary>
internal sealed class SerialRelay : Stream
{
    /// <summary>Output kept for the grain while no one has claimed the VM (a guest resumed on arrival); beyond this it is dropped.</summary>
    private const int MaxPending = 1 << 20;
    private readonly Lock _sync = new();
    private MemoryStream? _pending = new();
    private Stream _target = Null;

    /// <summary>Where output goes; setting it first passes on what was written before.</summary>
    public Stream Target
    {
        get
        {
            lock (_sync)
            {
                return _target;
            }
        }

        set
        {
            lock (_sync)
            {
                if (_pending is { } pending)
                {
                    _pending = null;
                    value.Write(pending.GetBuffer(), 0, (int)pending.Length);
                }

                _target = value;
            }
        }
    }

    public override bool CanRead => false;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    public override void Flush()
    {
        lock (_sync)
        {
            _target.Flush();
        }
    }

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        lock (_sync)
        {
            if (_pending is { } pending)
            {
                if (pending.Length + buffer.Length <= MaxPending)
                {
                    pending.Write(buffer);
                }
            }
            else
            {
                _target.Write(buffer);
            }
        }
    }
}
