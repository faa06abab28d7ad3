using System.Net;
using Virt.Cpu;
using Virt.Debugging;

namespace Virt;

/// <summary>Guest debugging with GDB: <see cref="StartGdbServerAsync"/>.</summary>
public static class GdbServerExtensions
{
    /// <summary>
    /// Starts a GDB remote-protocol server for <paramref name="vm"/> on <paramref name="endPoint"/> (an
    /// <see cref="IPEndPoint"/>, port 0 for any free port, or a <see cref="System.Net.Sockets.UnixDomainSocketEndPoint"/>).
    /// GDB attaches with <c>target remote HOST:PORT</c>; the VM pauses while GDB looks at it. Call it before
    /// <see cref="VirtualMachine.StartAsync"/> to debug from the first instruction: GDB's <c>continue</c> then starts the
    /// VM. Dispose the server to end debugging (the guest runs on). See docs/debugging.md.
    /// </summary>
    /// <exception cref="NotSupportedException">The backend cannot single-step or stop at breakpoints (<see cref="IVirtualCpu.DebugFeatures"/>).</exception>
    /// <exception cref="InvalidOperationException">A GDB server already runs for this VM: dispose it first.</exception>
    public static Task<GdbServer> StartGdbServerAsync(this VirtualMachine vm, EndPoint endPoint, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(vm);
        ArgumentNullException.ThrowIfNull(endPoint);
        cancellationToken.ThrowIfCancellationRequested();
        var debugger = new GuestDebugger(vm.Vcpus, vm.Memory, vm.RequestDebugPause);
        if ((debugger.Features & GuestDebugFeatures.SingleStep) == 0)
        {
            throw new NotSupportedException($"The {vm.BackendSelection.Name} backend cannot single-step this VM's vCPUs, so it cannot be debugged with GDB (see docs/backends.md).");
        }

        if (!vm.TryAttachDebugger(debugger))
        {
            throw new InvalidOperationException("A GDB server already runs for this VM; dispose it before starting another.");
        }

        try
        {
            return Task.FromResult(GdbServer.Start(vm, debugger, endPoint, vm.Logger));
        }
        catch
        {
            vm.DetachDebugger(debugger);
            throw;
        }
    }
}
