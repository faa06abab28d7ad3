using System.Buffers;
using System.Security.Cryptography;

namespace Virt.Devices.Virtio;

/// <summary>
/// A virtio-rng entropy device (virtio 1.2, section 5.4): fills the guest's buffers from the host CSPRNG
/// (<see cref="RandomNumberGenerator"/>), optionally limited to a number of bytes per second.
/// </summary>
public sealed class VirtioRngDevice : VirtioDevice
{
    private const ushort QueueSize = 64;
    /// <summary>Most bytes handed out per request, so one huge buffer cannot monopolise the limiter.</summary>
    private const int MaxRequest = 64 * 1024;

    private readonly TokenBucket? _limit;
    private long _bytesServed;

    /// <summary>Creates the device; <paramref name="bytesPerSecond"/> limits the entropy rate (null: no limit).</summary>
    public VirtioRngDevice(long? bytesPerSecond = null)
    {
        if (bytesPerSecond is long rate)
        {
            ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rate, nameof(bytesPerSecond));
            _limit = new TokenBucket(rate);
        }

        AddWorker(DrainAsync, 0);
    }

    /// <summary>Random bytes given to the guest so far.</summary>
    public long BytesServed => Interlocked.Read(ref _bytesServed);

    /// <inheritdoc />
    public override VirtioDeviceType DeviceType => VirtioDeviceType.Entropy;

    /// <inheritdoc />
    public override IReadOnlyList<ushort> QueueMaxSizes { get; } = [QueueSize];

    private async Task DrainAsync(VirtioDeviceContext context)
    {
        var queue = context.Queues[0];
        var token = context.Stopping;
        byte[] buffer = ArrayPool<byte>.Shared.Rent(MaxRequest);
        try
        {
            while (!token.IsCancellationRequested && queue.TryPop(out var chain))
            {
                int n = (int)Math.Min(chain.WritableLength, MaxRequest);
                if (_limit is not null)
                {
                    await _limit.ConsumeAsync(n, token).ConfigureAwait(false);
                }

                RandomNumberGenerator.Fill(buffer.AsSpan(0, n));
                int written = chain.Write(0, buffer.AsSpan(0, n));
                CryptographicOperations.ZeroMemory(buffer.AsSpan(0, n));

                // Counted before the used entry is published: whoever sees the bytes served also sees them counted.
                Interlocked.Add(ref _bytesServed, written);
                queue.AddUsed(chain, (uint)written);
                context.SignalUsed(queue);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }
}
