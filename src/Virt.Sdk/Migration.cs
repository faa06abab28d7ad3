using System.Buffers.Binary;
using System.Numerics;

namespace Virt;

/// <summary>How <see cref="VirtualMachine.MigrateAsync"/> copies a running VM.</summary>
public sealed record MigrationOptions
{
    /// <summary>
    /// The most rounds of copying while the guest runs (the first copies all of memory, each later one the pages written
    /// during the round before). A guest that writes faster than the stream carries never converges; after this many
    /// rounds it is paused for the rest. Default 30.
    /// </summary>
    public int MaxPreCopyRounds { get; init; } = 30;

    /// <summary>
    /// The guest is paused for the last copy once a round leaves at most this many written pages (4 KiB each) to send.
    /// Smaller means less downtime and more rounds. Default 256 (1 MiB).
    /// </summary>
    public int StopAndCopyPages { get; init; } = 256;
}

/// <summary>What a migration did: how long, how much, and how long the guest was stopped.</summary>
public sealed record MigrationReport
{
    /// <summary>Rounds of copying, counting the last one with the guest paused.</summary>
    public required int Rounds { get; init; }

    /// <summary>Whether memory was copied while the guest ran (the VM tracks dirty pages and was running).</summary>
    public required bool PreCopy { get; init; }

    /// <summary>Pages sent in all rounds (a page written again is sent again).</summary>
    public required long PagesSent { get; init; }

    /// <summary>Pages sent while the guest was paused.</summary>
    public required long PagesSentPaused { get; init; }

    /// <summary>Bytes written to the stream.</summary>
    public required long BytesSent { get; init; }

    /// <summary>From the call to the last byte written.</summary>
    public required TimeSpan Duration { get; init; }

    /// <summary>How long this side kept the guest paused before the stream had everything (the receiver's restore adds its own time).</summary>
    public required TimeSpan Downtime { get; init; }
}

/// <summary>
/// The migration stream: a header (magic, version, RAM size), then frames. A frame is a kind byte and its body:
/// pages (count, then each page's RAM offset (<see cref="RamLayout"/>: its guest address below the 32-bit device
/// window) and 4096 bytes), the machine state (length, then a snapshot without
/// memory: docs/snapshots.md), or an abort (length, UTF-8 reason). Little-endian throughout.
/// </summary>
internal static class MigrationStream
{
    public const int Version = 1;
    public const int PageSize = 4096;
    public const int PagesPerFrame = 256;
    public const byte PagesFrame = 1;
    public const byte StateFrame = 2;
    public const byte AbortFrame = 3;
    public const int HeaderSize = 8 + 4 + 8;

    /// <summary>The largest machine state a receiver accepts: far above any real machine's, far below what would exhaust memory.</summary>
    public const long MaxStateBytes = 256L << 20;

    public static ReadOnlySpan<byte> Magic => "VIRTMIGR"u8;
}

/// <summary>The sending side: batches pages into frames and counts what it sent.</summary>
internal sealed class MigrationSender(Stream stream, Virt.Memory.GuestMemory memory)
{
    private readonly byte[] _frame = new byte[5 + (MigrationStream.PagesPerFrame * (8 + MigrationStream.PageSize))];
    private int _pagesInFrame;

    public long BytesSent { get; private set; }

    public long PagesSent { get; private set; }

    public async Task WriteHeaderAsync(CancellationToken cancellationToken)
    {
        var header = new byte[MigrationStream.HeaderSize];
        MigrationStream.Magic.CopyTo(header);
        BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(8), MigrationStream.Version);
        BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(12), memory.TotalSize);
        await WriteAsync(header, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Sends every page that is not all zero (the receiver's memory starts zero).</summary>
    public async Task SendNonZeroPagesAsync(CancellationToken cancellationToken)
    {
        ulong ramBase = 0;
        foreach (var region in memory.Regions)
        {
            for (ulong offset = 0; offset < region.Size; offset += MigrationStream.PageSize)
            {
                await AddPageAsync(region.Start.Value + offset, ramBase + offset, skipZero: true, cancellationToken).ConfigureAwait(false);
            }

            ramBase += region.Size;
        }

        await FlushPagesAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Sends the pages set in <paramref name="dirty"/> (one bitmap per memory region), zero or not.</summary>
    public async Task SendPagesAsync(ulong[][] dirty, CancellationToken cancellationToken)
    {
        ulong ramBase = 0;
        for (int r = 0; r < dirty.Length; r++)
        {
            ulong start = memory.Regions[r].Start.Value;
            ulong regionRamBase = ramBase;
            ramBase += memory.Regions[r].Size;
            var bitmap = dirty[r];
            for (int w = 0; w < bitmap.Length; w++)
            {
                ulong word = bitmap[w];
                while (word != 0)
                {
                    int bit = BitOperations.TrailingZeroCount(word);
                    word &= word - 1;
                    ulong offset = (((ulong)w * 64) + (ulong)bit) * MigrationStream.PageSize;
                    await AddPageAsync(start + offset, regionRamBase + offset, skipZero: false, cancellationToken).ConfigureAwait(false);
                }
            }
        }

        await FlushPagesAsync(cancellationToken).ConfigureAwait(false);
    }

    public async Task SendStateAsync(ReadOnlyMemory<byte> state, CancellationToken cancellationToken)
    {
        var head = new byte[9];
        head[0] = MigrationStream.StateFrame;
        BinaryPrimitives.WriteInt64LittleEndian(head.AsSpan(1), state.Length);
        await WriteAsync(head, cancellationToken).ConfigureAwait(false);
        await WriteAsync(state, cancellationToken).ConfigureAwait(false);
        await stream.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Tells the receiver the migration is abandoned, if the stream still carries anything.</summary>
    public async Task TryAbortAsync(string reason)
    {
        try
        {
            _pagesInFrame = 0;
            var text = System.Text.Encoding.UTF8.GetBytes(reason);
            var frame = new byte[5 + text.Length];
            frame[0] = MigrationStream.AbortFrame;
            BinaryPrimitives.WriteInt32LittleEndian(frame.AsSpan(1), text.Length);
            text.CopyTo(frame, 5);
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            await stream.WriteAsync(frame, timeout.Token).ConfigureAwait(false);
            await stream.FlushAsync(timeout.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or NotSupportedException or OperationCanceledException)
        {
            // The stream is what failed; the receiver sees it end.
        }
    }

    /// <summary>Adds the page at guest address <paramref name="address"/>; the stream names it by its RAM offset <paramref name="ramOffset"/> (see <see cref="RamLayout"/>).</summary>
    private async Task AddPageAsync(ulong address, ulong ramOffset, bool skipZero, CancellationToken cancellationToken)
    {
        int at = 5 + (_pagesInFrame * (8 + MigrationStream.PageSize));
        var page = _frame.AsSpan(at + 8, MigrationStream.PageSize);
        memory.Read(new GuestAddress(address), page);
        if (skipZero && !page.ContainsAnyExcept((byte)0))
        {
            return;
        }

        BinaryPrimitives.WriteUInt64LittleEndian(_frame.AsSpan(at), ramOffset);
        _pagesInFrame++;
        PagesSent++;
        if (_pagesInFrame == MigrationStream.PagesPerFrame)
        {
            await FlushPagesAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    private async Task FlushPagesAsync(CancellationToken cancellationToken)
    {
        if (_pagesInFrame == 0)
        {
            return;
        }

        _frame[0] = MigrationStream.PagesFrame;
        BinaryPrimitives.WriteInt32LittleEndian(_frame.AsSpan(1), _pagesInFrame);
        int length = 5 + (_pagesInFrame * (8 + MigrationStream.PageSize));
        _pagesInFrame = 0;
        await WriteAsync(_frame.AsMemory(0, length), cancellationToken).ConfigureAwait(false);
    }

    private async Task WriteAsync(ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        await stream.WriteAsync(data, cancellationToken).ConfigureAwait(false);
        BytesSent += data.Length;
    }
}
