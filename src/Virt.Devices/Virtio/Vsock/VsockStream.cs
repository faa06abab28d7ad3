namespace Virt.Devices.Virtio;

/// <summary>
/// One vsock stream connection between the host and a program in the guest, as a .NET <see cref="Stream"/>
/// (from <see cref="VirtioVsockDevice.ConnectAsync"/> or <see cref="VsockListener.AcceptAsync"/>).
/// </summary>
/// <remarks>
/// <para>
/// Reads return what the guest sent, then 0 once the guest shut down sending or closed its socket. Writes copy into
/// a send buffer of 256 KiB and wait while it is full; the device hands the bytes to the guest within the credit the
/// guest's socket advertises, so a guest that stops reading stalls the writer (back-pressure) instead of growing
/// host memory. <see cref="FlushAsync(CancellationToken)"/> waits until every written byte went to the guest.
/// </para>
/// <para>
/// <see cref="CompleteWrites"/> half-closes (the guest reads end-of-file); disposing closes both directions. A
/// connection the guest aborted (RST) or the device lost (a driver reset) makes reads and writes throw
/// <see cref="IOException"/> once the bytes received before are read.
/// </para>
/// <para>Threading: one reader and one writer may use the stream at the same time. Cancellation tokens are honoured.</para>
/// </remarks>
public sealed class VsockStream : Stream
{
    private readonly VsockMultiplexer _mux;
    private readonly VsockConnection _connection;
    private int _disposed;

    internal VsockStream(VsockMultiplexer mux, VsockConnection connection)
    {
        _mux = mux;
        _connection = connection;
    }

    /// <summary>The host's port of this connection.</summary>
    public uint LocalPort => _connection.LocalPort;

    /// <summary>The guest's port of this connection.</summary>
    public uint RemotePort => _connection.PeerPort;

    /// <inheritdoc />
    public override bool CanRead => Volatile.Read(ref _disposed) == 0;

    /// <inheritdoc />
    public override bool CanWrite => Volatile.Read(ref _disposed) == 0;

    /// <inheritdoc />
    public override bool CanSeek => false;

    /// <inheritdoc />
    public override long Length => throw new NotSupportedException("A vsock stream has no length.");

    /// <inheritdoc />
    public override long Position
    {
        get => throw new NotSupportedException("A vsock stream has no position.");
        set => throw new NotSupportedException("A vsock stream has no position.");
    }

    /// <inheritdoc />
    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        return _mux.ReadAsync(_connection, buffer, cancellationToken);
    }

    /// <inheritdoc />
    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    /// <inheritdoc />
    public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

    /// <inheritdoc />
    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        return _mux.WriteAsync(_connection, buffer, cancellationToken);
    }

    /// <inheritdoc />
    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    /// <inheritdoc />
    public override void Write(byte[] buffer, int offset, int count) => WriteAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

    /// <summary>Waits until every byte written so far was handed to the guest (or the connection ended).</summary>
    public override Task FlushAsync(CancellationToken cancellationToken) => _mux.FlushAsync(_connection, cancellationToken).AsTask();

    /// <inheritdoc />
    public override void Flush() => FlushAsync(CancellationToken.None).GetAwaiter().GetResult();

    /// <summary>
    /// Half-closes the connection: after the bytes already written, the guest reads end-of-file. Reading goes on.
    /// Further writes throw <see cref="InvalidOperationException"/>.
    /// </summary>
    public void CompleteWrites()
    {
        ThrowIfDisposed();
        _mux.CompleteWrites(_connection);
    }

    /// <inheritdoc />
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException("A vsock stream cannot seek.");

    /// <inheritdoc />
    public override void SetLength(long value) => throw new NotSupportedException("A vsock stream has no length.");

    /// <summary>Closes the connection: the bytes already written still go to the guest, then a SHUTDOWN.</summary>
    protected override void Dispose(bool disposing)
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            _mux.Close(_connection);
        }

        base.Dispose(disposing);
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
}
