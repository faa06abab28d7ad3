using System.Buffers.Binary;

namespace Virt.Network;

/// <summary>
/// Wraps a backend and records every frame in both directions into a libpcap file (classic format, magic
/// 0xa1b2c3d4, link type 1 = Ethernet) that Wireshark and tcpdump open.
/// </summary>
public sealed class PcapCapture : INetworkBackend
{
    private const uint Magic = 0xa1b2c3d4;
    private const ushort VersionMajor = 2;
    private const ushort VersionMinor = 4;
    private const uint LinkTypeEthernet = 1;
    private const int SnapLength = 65535;

    private readonly INetworkBackend _inner;
    private readonly Stream _output;
    private readonly bool _ownsOutput;
    private readonly TimeProvider _time;
    private readonly Lock _sync = new();
    private long _frames;
    private bool _disposed;

    /// <summary>Records frames of <paramref name="inner"/> into a new file at <paramref name="path"/>.</summary>
    public PcapCapture(INetworkBackend inner, string path, TimeProvider? timeProvider = null)
        : this(inner, new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.Read), ownsOutput: true, timeProvider)
    {
    }

    /// <summary>Records frames of <paramref name="inner"/> into <paramref name="output"/>.</summary>
    public PcapCapture(INetworkBackend inner, Stream output, bool ownsOutput = false, TimeProvider? timeProvider = null)
    {
        ArgumentNullException.ThrowIfNull(inner);
        ArgumentNullException.ThrowIfNull(output);
        _inner = inner;
        _output = output;
        _ownsOutput = ownsOutput;
        _time = timeProvider ?? TimeProvider.System;
        Span<byte> header = stackalloc byte[24];
        BinaryPrimitives.WriteUInt32LittleEndian(header, Magic);
        BinaryPrimitives.WriteUInt16LittleEndian(header[4..], VersionMajor);
        BinaryPrimitives.WriteUInt16LittleEndian(header[6..], VersionMinor);
        BinaryPrimitives.WriteInt32LittleEndian(header[8..], 0);   // thiszone: timestamps are UTC
        BinaryPrimitives.WriteUInt32LittleEndian(header[12..], 0); // sigfigs
        BinaryPrimitives.WriteUInt32LittleEndian(header[16..], SnapLength);
        BinaryPrimitives.WriteUInt32LittleEndian(header[20..], LinkTypeEthernet);
        _output.Write(header);
        _output.Flush();
    }

    /// <summary>Frames recorded so far.</summary>
    public long FramesCaptured => Interlocked.Read(ref _frames);

    /// <inheritdoc />
    public ValueTask SendAsync(ReadOnlyMemory<byte> frame, CancellationToken cancellationToken = default)
    {
        Record(frame.Span);
        return _inner.SendAsync(frame, cancellationToken);
    }

    /// <inheritdoc />
    public void Attach(Func<ReadOnlyMemory<byte>, bool> receiver)
    {
        ArgumentNullException.ThrowIfNull(receiver);
        _inner.Attach(frame =>
        {
            Record(frame.Span);
            return receiver(frame);
        });
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        lock (_sync)
        {
            _disposed = true;
            _output.Flush();
        }

        if (_ownsOutput)
        {
            await _output.DisposeAsync().ConfigureAwait(false);
        }

        await _inner.DisposeAsync().ConfigureAwait(false);
    }

    private void Record(ReadOnlySpan<byte> frame)
    {
        var now = _time.GetUtcNow();
        long micros = (now.UtcTicks - DateTimeOffset.UnixEpoch.UtcTicks) / 10;
        int captured = Math.Min(frame.Length, SnapLength);
        Span<byte> record = stackalloc byte[16];
        BinaryPrimitives.WriteUInt32LittleEndian(record, (uint)(micros / 1_000_000));
        BinaryPrimitives.WriteUInt32LittleEndian(record[4..], (uint)(micros % 1_000_000));
        BinaryPrimitives.WriteUInt32LittleEndian(record[8..], (uint)captured);
        BinaryPrimitives.WriteUInt32LittleEndian(record[12..], (uint)frame.Length);
        lock (_sync)
        {
            if (_disposed)
            {
                return;
            }

            _output.Write(record);
            _output.Write(frame[..captured]);
            _output.Flush();
            _frames++;
        }
    }
}
