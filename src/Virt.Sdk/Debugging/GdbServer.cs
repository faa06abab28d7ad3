using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace Virt.Debugging;

/// <summary>
/// A GDB remote-protocol server for one VM (<see cref="GdbServerExtensions.StartGdbServerAsync"/>): GDB connects with
/// <c>target remote HOST:PORT</c> and debugs the guest as an x86-64 target whose threads are the vCPUs. One client at a
/// time; a client that disconnects without detaching leaves the guest running with its breakpoints removed.
/// Disposing closes the server (and any client) and lets the guest run on. See docs/debugging.md.
/// </summary>
public sealed partial class GdbServer : IAsyncDisposable
{
    private readonly VirtualMachine _vm;
    private readonly GuestDebugger _debugger;
    private readonly Socket _listener;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _closing = new();
    private readonly Task _acceptLoop;
    private int _disposed;

    private GdbServer(VirtualMachine vm, GuestDebugger debugger, Socket listener, ILogger logger)
    {
        _vm = vm;
        _debugger = debugger;
        _listener = listener;
        _logger = logger;
        LocalEndPoint = listener.LocalEndPoint!;
        _acceptLoop = AcceptLoopAsync(_closing.Token);
    }

    /// <summary>The address GDB connects to (with the port the system chose when port 0 was asked for).</summary>
    public EndPoint LocalEndPoint { get; }

    internal static GdbServer Start(VirtualMachine vm, GuestDebugger debugger, EndPoint endPoint, ILogger logger)
    {
        var protocol = endPoint is UnixDomainSocketEndPoint ? ProtocolType.Unspecified : ProtocolType.Tcp;
        var listener = new Socket(endPoint.AddressFamily, SocketType.Stream, protocol);
        try
        {
            listener.Bind(endPoint);
            listener.Listen(1);
        }
        catch
        {
            listener.Dispose();
            throw;
        }

        return new GdbServer(vm, debugger, listener, logger);
    }

    private async Task AcceptLoopAsync(CancellationToken cancellationToken)
    {
        while (!cancellationToken.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await _listener.AcceptAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                return;
            }

            if (client.ProtocolType == ProtocolType.Tcp)
            {
                client.NoDelay = true; // every packet waits for an answer: no Nagle delay
            }

            await using var stream = new NetworkStream(client, ownsSocket: true);
            using var connection = new GdbConnection(stream);
            using var sessionEnd = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            var reader = connection.ReadLoopAsync(sessionEnd.Token);
            try
            {
                LogAttached(_logger, _vm.Name, client.RemoteEndPoint?.ToString() ?? "?");
                await new GdbSession(_vm, _debugger, connection).RunAsync(sessionEnd.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or IOException or ObjectDisposedException or InvalidOperationException)
            {
                LogSessionEnded(_logger, _vm.Name, e.Message);
            }
            finally
            {
                await sessionEnd.CancelAsync().ConfigureAwait(false);
                client.Close();
                await reader.ConfigureAwait(false);
            }
        }
    }

    /// <summary>Closes the server and any client; the guest keeps running without host breakpoints.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        await _closing.CancelAsync().ConfigureAwait(false);
        _listener.Dispose();
        await _acceptLoop.ConfigureAwait(false);
        _closing.Dispose();
        _vm.DetachDebugger(_debugger);
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "VM {Name}: GDB attached from {Client}")]
    private static partial void LogAttached(ILogger logger, string name, string client);

    [LoggerMessage(Level = LogLevel.Information, Message = "VM {Name}: GDB session ended: {Reason}")]
    private static partial void LogSessionEnded(ILogger logger, string name, string reason);
}
