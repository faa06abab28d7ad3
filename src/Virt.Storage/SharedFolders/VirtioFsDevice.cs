using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using Virt.Devices.Virtio;
using Virt.Storage.SharedFolders;

namespace Virt.Storage;

/// <summary>
/// A virtio-fs device (virtio 1.2, section 5.11) that shares one host directory with the guest, read-only or
/// read-write. The guest's virtiofs driver sends FUSE requests on a high-priority queue (FORGET) and one request
/// queue; the device answers them against the directory, confined to it (see docs/devices.md, "Shared folders").
/// Linux hosts only.
/// </summary>
/// <remarks>
/// <para>
/// The guest mounts it by its tag: <c>mount -t virtiofs TAG /mnt/x</c> (the guest kit's /init does that for
/// <c>virt.mount=TAG:/mnt/x</c>). Every name is resolved relative to descriptors held open on the host, never as a
/// path, and symbolic links inside the share are never followed by the host, so the guest cannot reach anything
/// outside the directory; a read-only share refuses every change with EROFS. The guest sees every file owned by
/// uid 0 and gid 0; files it creates belong to the host process's user.
/// </para>
/// <para>
/// Requests are served one at a time off the vCPU thread. Snapshots keep no file-system state: after a restore the
/// guest's open files of the share are stale until it mounts the share again.
/// </para>
/// </remarks>
public sealed class VirtioFsDevice : VirtioDevice, IDisposable, IAsyncDisposable
{
    /// <summary>The longest tag, in UTF-8 bytes (the size of the configuration's tag field).</summary>
    public const int MaxTagLength = 36;

    /// <summary>Descriptors per queue offered to the driver.</summary>
    private const ushort QueueSize = 128;

    private readonly SharedFolderServer _server;
    private readonly byte[] _config = new byte[MaxTagLength + 4];

    /// <summary>Shares <paramref name="hostPath"/> under <paramref name="tag"/>.</summary>
    /// <param name="hostPath">The host directory to share.</param>
    /// <param name="tag">The name the guest mounts it by: 1 to 36 UTF-8 bytes, no whitespace, NUL or colon.</param>
    /// <param name="readOnly">Refuse every change with EROFS.</param>
    /// <exception cref="ArgumentException">The tag is empty, too long or holds whitespace, NUL or a colon.</exception>
    /// <exception cref="DirectoryNotFoundException">The directory does not exist.</exception>
    /// <exception cref="PlatformNotSupportedException">The host is not Linux.</exception>
    /// <exception cref="IOException">The directory cannot be opened.</exception>
    public VirtioFsDevice(string hostPath, string tag, bool readOnly = false)
    {
        ArgumentException.ThrowIfNullOrEmpty(hostPath);
        ValidateTag(tag);
        Encoding.UTF8.GetBytes(tag, _config);
        BinaryPrimitives.WriteUInt32LittleEndian(_config.AsSpan(MaxTagLength), 1); // num_request_queues
        _server = new SharedFolderServer(hostPath, readOnly);
        Tag = tag;
        AddWorker(context => Drain(context, 0), 0);
        AddWorker(context => Drain(context, 1), 1);
    }

    /// <summary>The tag the guest mounts the share by.</summary>
    public string Tag { get; }

    /// <summary>The shared directory's full host path.</summary>
    public string HostPath => _server.HostPath;

    /// <summary>Whether the share refuses every change.</summary>
    public bool IsReadOnly => _server.IsReadOnly;

    /// <inheritdoc />
    public override VirtioDeviceType DeviceType => VirtioDeviceType.FileSystem;

    /// <summary>The high-priority queue and one request queue.</summary>
    public override IReadOnlyList<ushort> QueueMaxSizes { get; } = [QueueSize, QueueSize];

    /// <inheritdoc />
    public override int ConfigSize => _config.Length;

    /// <summary>The request handler behind the queues (for tests and benchmarks).</summary>
    internal SharedFolderServer Server => _server;

    /// <summary>
    /// Checks that <paramref name="tag"/> can name a share: 1 to 36 UTF-8 bytes without whitespace, NUL or colon (the
    /// guest kit's <c>virt.mount=TAG:DIR</c> splits at the first colon).
    /// </summary>
    /// <exception cref="ArgumentException">It cannot; the message says why.</exception>
    public static void ValidateTag(string tag)
    {
        ArgumentException.ThrowIfNullOrEmpty(tag);
        if (Encoding.UTF8.GetByteCount(tag) > MaxTagLength)
        {
            throw new ArgumentException($"The shared-folder tag '{tag}' is longer than {MaxTagLength} UTF-8 bytes; use a shorter one.", nameof(tag));
        }

        if (tag.Any(c => char.IsWhiteSpace(c) || c is '\0' or ':' or ','))
        {
            throw new ArgumentException($"The shared-folder tag '{tag}' holds whitespace, a NUL, a colon or a comma; use letters, digits, '-' or '_'.", nameof(tag));
        }
    }

    /// <inheritdoc />
    public override void ReadConfig(int offset, Span<byte> data) => _config.AsSpan(offset, data.Length).CopyTo(data);

    /// <summary>Closes every host descriptor of the share.</summary>
    public void Dispose() => _server.Dispose();

    /// <summary>Closes every host descriptor of the share.</summary>
    public ValueTask DisposeAsync()
    {
        _server.Dispose();
        return ValueTask.CompletedTask;
    }

    /// <summary>The driver reset the device: its FUSE session is over, so every node id and file handle goes.</summary>
    protected override void OnReset() => _server.Reset();

    private Task Drain(VirtioDeviceContext context, int queueIndex)
    {
        var queue = context.Queues[queueIndex];
        var token = context.Stopping;
        while (!token.IsCancellationRequested && queue.TryPop(out var chain))
        {
            uint written = Serve(chain);
            queue.AddUsed(chain, written);
            context.SignalUsed(queue);
        }

        return Task.CompletedTask;
    }

    private uint Serve(DescriptorChain chain)
    {
        // A request longer than the largest one the server accepts is cut short; its header's length then exceeds
        // what was read and the parser answers EINVAL.
        int requestLength = (int)Math.Min(chain.ReadableLength, Fuse.MaxRequest);
        int replyLength = (int)Math.Min(chain.WritableLength, Fuse.OutHeaderSize + Fuse.MaxRead);
        byte[] request = ArrayPool<byte>.Shared.Rent(Math.Max(requestLength, 1));
        byte[] reply = ArrayPool<byte>.Shared.Rent(Math.Max(replyLength, 1));
        try
        {
            int read = chain.Read(0, request.AsSpan(0, requestLength));
            int answer = _server.Handle(request.AsSpan(0, read), reply.AsSpan(0, replyLength));
            return answer > 0 ? (uint)chain.Write(0, reply.AsSpan(0, answer)) : 0;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(request);
            ArrayPool<byte>.Shared.Return(reply);
        }
    }
}
