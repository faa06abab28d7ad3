using System.Text.RegularExpressions;
using Virt.Devices.Virtio;

namespace Virt;

/// <summary>
/// The ways into a running guest besides its console: the vsock device, the guest agent (run commands, copy files)
/// and waits for console lines. See docs/devices.md (vsock) and docs/linux-guests.md (agent).
/// </summary>
public static class VirtualMachineGuestExtensions
{
    extension(VirtualMachine vm)
    {
        /// <summary>The VM's vsock device: connect to guest ports and listen on host ports.</summary>
        /// <exception cref="InvalidOperationException">The VM has no vsock device.</exception>
        public VirtioVsockDevice Vsock => vm.Machine.Guest.Vsock
            ?? throw new InvalidOperationException("This VM has no vsock device; add one with WithVsock() or WithGuestAgent() on the builder.");

        /// <summary>The host side of the guest kit's agent: run commands, copy files.</summary>
        /// <exception cref="InvalidOperationException">The VM was built without <see cref="VirtualMachineBuilder.WithGuestAgent"/>.</exception>
        public GuestAgent Agent => vm.Machine.Guest.Agent
            ?? throw new InvalidOperationException("This VM has no guest agent; build it with WithGuestAgent() and boot the guest kit's initramfs.");

        /// <summary>Runs a command in the guest through the agent and collects its output; see <see cref="GuestAgent.ExecAsync(string, IEnumerable{string}?, string?, CancellationToken)"/>.</summary>
        /// <exception cref="InvalidOperationException">The VM has no guest agent.</exception>
        public Task<GuestExecResult> ExecAsync(string fileName, IEnumerable<string>? arguments = null, string? standardInput = null, CancellationToken cancellationToken = default) =>
            vm.Agent.ExecAsync(fileName, arguments, standardInput, cancellationToken);

        /// <summary>Runs a command in the guest with streamed input and output; see <see cref="GuestAgent.ExecAsync(GuestCommand, CancellationToken)"/>.</summary>
        /// <exception cref="InvalidOperationException">The VM has no guest agent.</exception>
        public Task<int> ExecAsync(GuestCommand command, CancellationToken cancellationToken = default) =>
            vm.Agent.ExecAsync(command, cancellationToken);

        /// <summary>Completes once the guest agent listens; see <see cref="GuestAgent.WaitAsync"/>.</summary>
        /// <exception cref="InvalidOperationException">The VM has no guest agent.</exception>
        public Task WaitForAgentAsync(CancellationToken cancellationToken = default) => vm.Agent.WaitAsync(cancellationToken);

        /// <summary>Copies <paramref name="source"/> to the guest file <paramref name="guestPath"/>; see <see cref="GuestAgent.CopyToGuestAsync"/>.</summary>
        /// <exception cref="InvalidOperationException">The VM has no guest agent.</exception>
        public Task CopyToGuestAsync(Stream source, string guestPath, CancellationToken cancellationToken = default) =>
            vm.Agent.CopyToGuestAsync(source, guestPath, null, cancellationToken);

        /// <summary>Copies the guest file <paramref name="guestPath"/> into <paramref name="destination"/>; see <see cref="GuestAgent.CopyFromGuestAsync"/>.</summary>
        /// <exception cref="InvalidOperationException">The VM has no guest agent.</exception>
        public Task CopyFromGuestAsync(string guestPath, Stream destination, CancellationToken cancellationToken = default) =>
            vm.Agent.CopyFromGuestAsync(guestPath, destination, cancellationToken);

        /// <summary>
        /// Waits for a line on the serial console that matches <paramref name="pattern"/>: one printed already (the
        /// last 1024 lines are kept) or a later one. The pattern runs on the vCPU thread for every line: keep it simple.
        /// </summary>
        /// <param name="pattern">What the line must match.</param>
        /// <param name="timeout">How long to wait.</param>
        /// <param name="cancellationToken">Cancels the wait.</param>
        /// <returns>The matching line, without its line end.</returns>
        /// <exception cref="InvalidOperationException">The VM has no serial console.</exception>
        /// <exception cref="TimeoutException">No matching line came within <paramref name="timeout"/>.</exception>
        public Task<string> WaitForConsoleLineAsync(Regex pattern, TimeSpan timeout, CancellationToken cancellationToken = default)
        {
            ArgumentNullException.ThrowIfNull(pattern);
            var console = vm.Machine.Guest.Console ?? throw new InvalidOperationException("This VM has no serial console; add one with WithSerialConsole(...).");
            return WaitForLineAsync(console, pattern, timeout, cancellationToken);
        }
    }

    private static async Task<string> WaitForLineAsync(ConsoleLineMonitor console, Regex pattern, TimeSpan timeout, CancellationToken cancellationToken)
    {
        try
        {
            return await console.WaitForLineAsync(pattern, cancellationToken).WaitAsync(timeout, cancellationToken).ConfigureAwait(false);
        }
        catch (TimeoutException e)
        {
            throw new TimeoutException($"No console line matched '{pattern}' within {timeout}.", e);
        }
    }
}
