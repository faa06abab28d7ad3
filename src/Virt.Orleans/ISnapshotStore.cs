namespace Virt.Orleans;

/// <summary>
/// Where VM grains keep their snapshots: large blobs, written whole and never changed, named by a reference that the
/// grain keeps in its (small) grain state. Every silo of a cluster must reach the same store.
/// </summary>
/// <remarks>
/// A restored VM maps guest memory copy-on-write from the file <see cref="GetLocalPathAsync"/> returns, for as long
/// as it lives: that file must not change meanwhile. A store therefore writes every snapshot under a new reference
/// and never rewrites one; deleting a reference may only unlink its file. A store over a remote blob service
/// downloads the blob into a local file there.
/// </remarks>
public interface ISnapshotStore
{
    /// <summary>
    /// Writes a new snapshot of the VM <paramref name="vmName"/>: <paramref name="write"/> fills a seekable, writable
    /// stream, and the snapshot exists under the returned reference once the returned task completes (not before: a
    /// failed or cancelled write leaves nothing behind).
    /// </summary>
    /// <returns>The new snapshot's reference.</returns>
    Task<string> SaveAsync(string vmName, Func<Stream, CancellationToken, Task> write, CancellationToken cancellationToken = default);

    /// <summary>A local file with the snapshot's bytes, which stays unchanged while a VM restored from it lives.</summary>
    /// <exception cref="FileNotFoundException">The store has no snapshot under <paramref name="reference"/>.</exception>
    Task<string> GetLocalPathAsync(string reference, CancellationToken cancellationToken = default);

    /// <summary>Deletes a snapshot; a reference that does not exist is ignored. VMs restored from it keep running.</summary>
    Task DeleteAsync(string reference, CancellationToken cancellationToken = default);
}
