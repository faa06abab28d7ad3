using System.Buffers;
using System.Security.Cryptography;

namespace Virt.Devices.Virtio;

/// <summary>
/// A virtio-rng entropy device (virtio 1.2, section 5.4): fills the guest's buffers from the host CSPRNG
/// (<see cref="RandomNumberGenerator"/>), optionally limited to a number of bytes per second.
/// </summary>
public sealed class VirtioRngDevice : IVirtioDevice
{
    private const ushort QueueSize = 64;
    /// <summary>Most bytes handed out per request, so one huge buffer cannot monopolise the limiter.</summary>
    private const int MaxRequest = 64 * 1024;

    private readonly TokenBucket? _limit;
    private readonly QueueWorker _worker;
    private VirtioDeviceContext? _context;
    private long _bytesServed;

    /// <summary>Creates the device; <paramref name="bytesPerSecond"/> limits the entropy rate (null: no limit).</summary>
    public VirtioRngDevice(long? bytesPerSecond = null)
    {
        if (bytesPerSecond is long rate)
        {
            ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rate, nameof(bytesPerSecond));
            _limit = new TokenBucket(rate);
        }

        _worker = new QueueWorker(DrainAsync, e => _context?.Fail($"internal error: {e.Message}"));
    }

    /// <summary>Random bytes given to the guest so far.</summary>
    public long BytesServed => Interlocked.Read(ref _bytesServed);

    /// <inheritdoc />
    public VirtioDeviceType DeviceType => VirtioDeviceType.Entropy;

    /// <inheritdoc />
    public ulong DeviceFeatures => 0;

    /// <inheritdoc />
    public IReadOnlyList<ushort> QueueMaxSizes { get; } = [QueueSize];

    /// <inheritdoc />
    public int ConfigSize => 0;

    /// <inheritdoc />
    public void ReadConfig(int offset, Span<byte> data) => data.Clear();

    /// <inheritdoc />
    public void WriteConfig(int offset, ReadOnlySpan<byte> data)
    {
        // No configuration space.
    }

    /// <inheritdoc />
    public void Activate(VirtioDeviceContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        Volatile.Write(ref _context, context);
        _worker.Kick();
    }

    /// <inheritdoc />
    public void QueueNotified(int queueIndex) => _worker.Kick();

    /// <inheritdoc />
    public void Reset() => Volatile.Write(ref _context, null);

    private async Task DrainAsync()
    {
        var context = Volatile.Read(ref _context);
        if (context is null)
        {
            return;
        }

        var queue = context.Queues[0];
        var token = context.Stopping;
        byte[] buffer = ArrayPool<byte>.Shared.Rent(MaxRequest);
        try
        {
            while (!token.IsCancellationRequested && queue.TryPop(out var chain))
            {
                int n = (int)Math.Min(chain.WritableLength, MaxRequest);
                if (_limit?.Consume(n) is { } wait && wait > TimeSpan.Zero)
                {
                    await Task.Delay(wait, token).ConfigureAwait(false);
                }

                RandomNumberGenerator.Fill(buffer.AsSpan(0, n));
                int written = chain.Write(0, buffer.AsSpan(0, n));
                CryptographicOperations.ZeroMemory(buffer.AsSpan(0, n));
                queue.AddUsed(chain, (uint)written);
                context.SignalUsed(queue);
                Interlocked.Add(ref _bytesServed, written);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }
}
