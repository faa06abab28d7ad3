using Orleans;
using Orleans.Runtime;

namespace Virt.Orleans;

/// <summary>
/// A virtual machine as an Orleans grain, keyed by the VM's name. The grain builds the VM on the silo it activates
/// on, keeps it there while it runs, saves it to the silo's <see cref="ISnapshotStore"/> when it deactivates (a
/// silo shutting down, a move, idle collection of a paused VM) and on <see cref="SaveAsync"/>, and restores it from
/// the last snapshot when it activates again, on whichever silo that is: a VM outlives the silo it ran on.
/// </summary>
/// <remarks>
/// What a hard silo failure loses: everything the guest did after the last snapshot. The grain comes back at the next
/// call to it, as it was at that snapshot, in the lifecycle state it was last put in (running or paused). See docs/orleans.md.
/// Calls are answered in order (the grain is not reentrant); a call that waits for the guest
/// (<see cref="ExecAsync"/>, <see cref="WaitForConsoleAsync"/>) holds the others back until it returns.
/// </remarks>
public interface IVirtualMachineGrain : IGrainWithStringKey
{
    /// <summary>
    /// Builds the VM <paramref name="spec"/> describes (from a snapshot: restores it, paused); it is not started.
    /// Creating it again with an equal spec returns its status; with another spec it is refused.
    /// </summary>
    /// <exception cref="ArgumentException">The spec is incomplete; the message says what to set.</exception>
    /// <exception cref="InvalidOperationException">A VM with another spec exists under this name: delete it first.</exception>
    Task<VirtualMachineStatus> CreateAsync(VirtualMachineSpec spec, CancellationToken cancellationToken = default);

    /// <summary>Starts the VM (a created VM boots; a stopped one boots again from its spec; a restored, paused one continues).</summary>
    Task<VirtualMachineStatus> StartAsync(CancellationToken cancellationToken = default);

    /// <summary>Pauses a running VM.</summary>
    Task<VirtualMachineStatus> PauseAsync(CancellationToken cancellationToken = default);

    /// <summary>Resumes a paused VM.</summary>
    Task<VirtualMachineStatus> ResumeAsync(CancellationToken cancellationToken = default);

    /// <summary>Stops the VM and drops its snapshot: a later <see cref="StartAsync"/> boots it afresh from its spec.</summary>
    Task<VirtualMachineStatus> StopAsync(CancellationToken cancellationToken = default);

    /// <summary>
    /// Saves the VM to the snapshot store now (a running guest is paused for the save and resumed) and records the
    /// snapshot in the grain's state; the previous snapshot is deleted.
    /// </summary>
    Task<VirtualMachineStatus> SaveAsync(CancellationToken cancellationToken = default);

    /// <summary>Stops the VM, deletes its snapshot and the grain's state, and deactivates the grain.</summary>
    Task DeleteAsync(CancellationToken cancellationToken = default);

    /// <summary>The VM's state and where it runs.</summary>
    Task<VirtualMachineStatus> GetStatusAsync(CancellationToken cancellationToken = default);

    /// <summary>Counters and times: saves, restores, console bytes, running time.</summary>
    Task<VirtualMachineMetrics> GetMetricsAsync(CancellationToken cancellationToken = default);

    /// <summary>
    /// Moves the VM to <paramref name="target"/> (or, if null, to the silo placement chooses by capacity). Live
    /// (<see cref="VirtualMachineMoveMode.Live"/>, and by default where the target accepts it): this call copies the
    /// VM's memory to the target while the guest runs, pauses it for the last pages and its state, and returns once
    /// the target has it; the grain then deactivates here and activates on the target, which resumes the guest.
    /// Save and restore: once this call returns, the grain deactivates, saving the VM to the store, and activates on
    /// the target, which restores it in the state it was in. Either way the grain keeps its name; callers see the move
    /// only as the latency of their next call.
    /// </summary>
    /// <returns>The silo the VM is moving to.</returns>
    /// <exception cref="InvalidOperationException">There is no VM, no other active silo to move to, or (for <see cref="VirtualMachineMoveMode.Live"/>) the live migration failed; the VM then runs on here.</exception>
    /// <exception cref="ClusterCapacityException">No target was given and no other silo has room for the VM.</exception>
    Task<SiloAddress> MoveAsync(SiloAddress? target = null, VirtualMachineMoveMode mode = VirtualMachineMoveMode.Auto, CancellationToken cancellationToken = default);

    /// <summary>Sends <paramref name="input"/> to the guest's serial console (with flow control: waits while the guest's receiver is full).</summary>
    /// <returns>The console output offset at the time of the send: output from there on is the guest's answer.</returns>
    Task<long> WriteConsoleAsync(byte[] input, CancellationToken cancellationToken = default);

    /// <summary>Serial console output from <paramref name="offset"/> on, at most <paramref name="maxBytes"/>; empty if there is none yet.</summary>
    Task<ConsoleOutput> ReadConsoleAsync(long offset, int maxBytes = 65536, CancellationToken cancellationToken = default);

    /// <summary>
    /// Waits until the console output from <paramref name="offset"/> on contains <paramref name="text"/> (UTF-8) and returns
    /// the output from <paramref name="offset"/> to the end of it.
    /// </summary>
    /// <exception cref="TimeoutException">The text did not appear within <paramref name="timeout"/>; the message holds the output seen.</exception>
    Task<ConsoleOutput> WaitForConsoleAsync(string text, long offset, TimeSpan timeout, CancellationToken cancellationToken = default);

    /// <summary>
    /// Request and response over the serial console: sends <paramref name="input"/> and waits for <paramref name="expect"/>
    /// in what the guest writes afterwards (for a shell: a command line, and a marker the command echoes at its end).
    /// </summary>
    /// <exception cref="TimeoutException">The expected text did not appear within <paramref name="timeout"/>.</exception>
    Task<ConsoleOutput> ExecAsync(string input, string expect, TimeSpan timeout, CancellationToken cancellationToken = default);

    /// <summary>Reads <paramref name="length"/> bytes (at most 1 MiB) of guest memory at <paramref name="address"/>; a running guest may be changing them.</summary>
    Task<byte[]> ReadMemoryAsync(ulong address, int length, CancellationToken cancellationToken = default);
}
