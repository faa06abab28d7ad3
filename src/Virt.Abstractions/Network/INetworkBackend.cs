namespace Virt.Network;

/// <summary>
/// The host side of a virtual NIC: frames the guest sends go to <see cref="SendAsync"/>; frames for the
/// guest arrive through the receiver registered with <see cref="Attach"/>.
/// </summary>
public interface INetworkBackend : IAsyncDisposable
{
    /// <summary>Sends one Ethernet frame (destination MAC first, no FCS) from the guest.</summary>
    ValueTask SendAsync(ReadOnlyMemory<byte> frame, CancellationToken cancellationToken = default);

    /// <summary>
    /// Registers the callback that takes frames for the guest. It returns <see langword="false"/> when the
    /// guest has no receive buffer; the backend then drops the frame, as a full NIC does.
    /// </summary>
    void Attach(Func<ReadOnlyMemory<byte>, bool> receiver);
}
