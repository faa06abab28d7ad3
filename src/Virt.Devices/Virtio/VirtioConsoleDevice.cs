using System.Buffers;
using System.Buffers.Binary;
using Virt.Snapshots;

namespace Virt.Devices.Virtio;

/// <summary>
/// A virtio-console device (virtio 1.2, section 5.3) with a single port (no MULTIPORT): bytes the guest writes go to
/// a host <see cref="Stream"/>, bytes read from the stream go to the guest (<c>/dev/hvc0</c> in Linux).
/// </summary>
/// <remarks>
/// <para>
/// Input the guest has no buffers for yet is held (up to 64 KiB; the stream is not read further until the guest
/// catches up). Dispose the device to stop reading the stream.
/// </para>
/// <para>
/// Snapshots: the state is the input held for the guest (read from the stream, not yet delivered); a restored
/// device delivers it before anything its own stream brings. Output the guest wrote before the snapshot has been
/// given to the stream already. The port has no other state (one port, no MULTIPORT).
/// </para>
/// </remarks>
public sealed class VirtioConsoleDevice : VirtioDevice, IAsyncDisposable, IPersistentState
{
    /// <summary>Feature bit 2: the driver may write single characters to emerg_wr before the queues work.</summary>
    internal const ulong FeatureEmergencyWrite = 1UL << 2;
    private const ushort QueueSize = 64;
    private const int ReceiveQueue = 0;
    private const int TransmitQueue = 1;
    private const int MaxPending = 64 * 1024;
    private const int ReadChunk = 4096;
    /// <summary>The most input ever held: the reader stops at <see cref="MaxPending"/> after a chunk that crossed it.</summary>
    private const int MaxHeld = MaxPending + ReadChunk;
    private const int EmergencyWriteOffset = 8;

    private readonly Stream _stream;
    private readonly byte[] _config = new byte[12];
    private readonly Lock _pendingSync = new();
    private readonly Queue<byte> _pending = new();
    private readonly SemaphoreSlim _room = new(0, 1);
    private readonly CancellationTokenSource _disposed = new();
    private readonly VirtqueueWorker _receiver;
    private readonly SemaphoreSlim _writeGate = new(1, 1);
    private Task? _reader;

    /// <summary>Connects the console to <paramref name="stream"/>: it is read if readable and written if writable.</summary>
    public VirtioConsoleDevice(Stream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        _stream = stream;
        BinaryPrimitives.WriteUInt32LittleEndian(_config.AsSpan(4), 1); // max_nr_ports (read only with MULTIPORT)
        _receiver = AddWorker(ReceiveAsync, ReceiveQueue);
        AddWorker(TransmitAsync, TransmitQueue);
    }

    /// <inheritdoc />
    public override VirtioDeviceType DeviceType => VirtioDeviceType.Console;

    /// <inheritdoc />
    public override ulong DeviceFeatures => FeatureEmergencyWrite;

    /// <inheritdoc />
    public override IReadOnlyList<ushort> QueueMaxSizes { get; } = [QueueSize, QueueSize];

    /// <inheritdoc />
    public override int ConfigSize => _config.Length;

    /// <inheritdoc />
    public override void ReadConfig(int offset, Span<byte> data) => _config.AsSpan(offset, data.Length).CopyTo(data);

    /// <inheritdoc />
    public override void WriteConfig(int offset, ReadOnlySpan<byte> data)
    {
        if (offset == EmergencyWriteOffset && data.Length >= 1 && _stream.CanWrite)
        {
            byte b = data[0];
            var token = _disposed.Token;
            _ = Task.Run(() => WriteToStreamAsync(new[] { b }, token));
        }
    }

    /// <summary>The device's part of a snapshot section: <c>virtio-console</c>.</summary>
    public string StateName => "virtio-console";

    /// <summary>The layout <see cref="SaveState"/> writes: 1.</summary>
    public int StateVersion => 1;

    /// <summary>Writes the input held for the guest.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="writer"/> is null.</exception>
    public void SaveState(StateWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        byte[] held;
        lock (_pendingSync)
        {
            held = [.. _pending];
        }

        writer.WriteBytes(held);
    }

    /// <summary>Replaces the input held for the guest with the saved input; it is delivered before the stream's.</summary>
    /// <exception cref="SnapshotFormatException">The data is corrupt (more input than the device ever holds).</exception>
    public void RestoreState(ref StateReader reader, int version)
    {
        if (version != StateVersion)
        {
            throw reader.UnsupportedVersion(version, StateVersion);
        }

        var held = reader.ReadBytes("pending input", MaxHeld);
        reader.EnsureEnd();
        lock (_pendingSync)
        {
            _pending.Clear();
            foreach (byte b in held)
            {
                _pending.Enqueue(b);
            }
        }
    }

    /// <summary>Starts reading the host stream on the first activation; input read before it is held for the guest.</summary>
    protected override void OnActivated(VirtioDeviceContext context)
    {
        if (_stream.CanRead && _reader is null)
        {
            _reader = Task.Run(ReadStreamAsync);
        }
    }

    /// <summary>Stops reading the host stream (the stream itself is not disposed).</summary>
    public async ValueTask DisposeAsync()
    {
        if (_disposed.IsCancellationRequested)
        {
            return;
        }

        await _disposed.CancelAsync().ConfigureAwait(false);
        if (_reader is not null)
        {
            try
            {
                await _reader.ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
            }
        }
    }

    private async Task ReadStreamAsync()
    {
        var token = _disposed.Token;
        byte[] buffer = new byte[ReadChunk];
        while (!token.IsCancellationRequested)
        {
            int n;
            try
            {
                n = await _stream.ReadAsync(buffer, token).ConfigureAwait(false);
            }
            catch (IOException)
            {
                return;
            }
            catch (ObjectDisposedException)
            {
                return;
            }

            if (n == 0)
            {
                return;
            }

            bool full;
            lock (_pendingSync)
            {
                for (int i = 0; i < n; i++)
                {
                    _pending.Enqueue(buffer[i]);
                }

                full = _pending.Count >= MaxPending;
            }

            _receiver.Kick();
            if (full)
            {
                // Wait for the guest to take input before reading more.
                await _room.WaitAsync(token).ConfigureAwait(false);
            }
        }
    }

    private Task ReceiveAsync(VirtioDeviceContext context)
    {
        var queue = context.Queues[ReceiveQueue];
        bool signalled = false;
        while (!context.Stopping.IsCancellationRequested)
        {
            byte[] chunk;
            lock (_pendingSync)
            {
                if (_pending.Count == 0)
                {
                    break;
                }

                if (!queue.TryPop(out var chain))
                {
                    break;
                }

                int n = (int)Math.Min(chain.WritableLength, _pending.Count);
                chunk = new byte[n];
                for (int i = 0; i < n; i++)
                {
                    chunk[i] = _pending.Dequeue();
                }

                int written = chain.Write(0, chunk);
                queue.AddUsed(chain, (uint)written);
                signalled = true;
                if (_pending.Count < MaxPending && _room.CurrentCount == 0)
                {
                    _room.Release();
                }
            }
        }

        if (signalled)
        {
            context.SignalUsed(queue);
        }

        return Task.CompletedTask;
    }

    private async Task TransmitAsync(VirtioDeviceContext context)
    {
        var queue = context.Queues[TransmitQueue];
        var token = context.Stopping;
        while (!token.IsCancellationRequested && queue.TryPop(out var chain))
        {
            int length = (int)Math.Min(chain.ReadableLength, 1 << 20);
            byte[] data = ArrayPool<byte>.Shared.Rent(Math.Max(length, 1));
            try
            {
                int n = chain.Read(0, data.AsSpan(0, length));
                queue.AddUsed(chain, 0);
                context.SignalUsed(queue);
                if (_stream.CanWrite && n > 0)
                {
                    await WriteToStreamAsync(data.AsMemory(0, n), token).ConfigureAwait(false);
                }
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(data);
            }
        }
    }

    private async Task WriteToStreamAsync(ReadOnlyMemory<byte> data, CancellationToken token)
    {
        await _writeGate.WaitAsync(token).ConfigureAwait(false);
        try
        {
            await _stream.WriteAsync(data, token).ConfigureAwait(false);
            await _stream.FlushAsync(token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or NotSupportedException)
        {
            // The host side went away; the guest's output is dropped, as on a disconnected serial line.
        }
        finally
        {
            _writeGate.Release();
        }
    }
}
