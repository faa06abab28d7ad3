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

    /// <summary>Pages sent in all rounds (a page written again is sent again), including <see cref="ZeroPagesSent"/>.</summary>
    public required long PagesSent { get; init; }

    /// <summary>Of <see cref="PagesSent"/>, the written pages that were all zero and went as an 8-byte marker instead of their 4096 bytes.</summary>
    public required long ZeroPagesSent { get; init; }

    /// <summary>Pages sent while the guest was paused.</summary>
    public required long PagesSentPaused { get; init; }

    /// <summary>Bytes written to the stream.</summary>
    public required long BytesSent { get; init; }

    /// <summary>From the call to the last byte written.</summary>
    public required TimeSpan Duration { get; init; }

    /// <summary>How long this side kept the guest paused before the stream had everything (the receiver's restore adds its own time).</summary>
    public required TimeSpan Downtime { get; init; }

    /// <summary>Where <see cref="Downtime"/> went, step by step.</summary>
    public required MigrationDowntime DowntimeSteps { get; init; }
}

/// <summary>The steps of a migration's <see cref="MigrationReport.Downtime"/> on the sending side, in the order they happen; they add up to it.</summary>
public sealed record MigrationDowntime
{
    /// <summary>From asking the vCPUs to stop to every vCPU parked between two instructions (zero if the guest was not running).</summary>
    public required TimeSpan Pause { get; init; }

    /// <summary>Bringing the virtio devices to rest: requests they took complete into their used rings.</summary>
    public required TimeSpan Quiesce { get; init; }

    /// <summary>Collecting the last dirty pages and sending them (for a VM copied while paused: all of memory).</summary>
    public required TimeSpan LastPages { get; init; }

    /// <summary>Serialising the vCPUs, interrupt controllers, clocks and devices.</summary>
    public required TimeSpan SaveState { get; init; }

    /// <summary>Writing the machine state and flushing the stream.</summary>
    public required TimeSpan SendState { get; init; }
}

/// <summary>
/// The migration stream (version 2): a header (magic, version, RAM size), then frames. A frame is a kind byte and its
/// body: pages (count, then a table of each page's RAM offset (<see cref="RamLayout"/>: its guest address below the
/// 32-bit device window), bit 0 set for a page that is all zero, then 4096 bytes for each page of the table that is not
/// zero, in table order); the machine (length, then a snapshot holding only the machine's description, sent once before
/// the state so the receiver builds the machine while the last pages arrive); the machine state (length, then a snapshot
/// without memory: docs/snapshots.md); or an abort (length, UTF-8 reason). Little-endian throughout.
/// </summary>
internal static class MigrationStream
{
    public const int Version = 2;
    public const int PageSize = 4096;
    public const int PagesPerFrame = 256;
    public const byte PagesFrame = 1;
    public const byte StateFrame = 2;
    public const byte AbortFrame = 3;
    public const byte MachineFrame = 4;
    public const int HeaderSize = 8 + 4 + 8;

    /// <summary>In a page table entry: the page is all zero and no bytes follow for it.</summary>
    public const ulong ZeroPage = 1;

    /// <summary>The largest machine state a receiver accepts: far above any real machine's, far below what would exhaust memory.</summary>
    public const long MaxStateBytes = 256L << 20;

    /// <summary>What the sender gathers before writing to the stream: a frame of pages and more, so the last pages and the state leave in one write.</summary>
    public const int SendBufferSize = 2 << 20;

    public static ReadOnlySpan<byte> Magic => "VIRTMIGR"u8;
}

/// <summary>The sending side: batches pages into frames, buffers its writes and counts what it sent.</summary>
internal sealed class MigrationSender(Stream stream, Virt.Memory.GuestMemory memory)
{
    private readonly byte[] _buffer = new byte[MigrationStream.SendBufferSize];
    private int _buffered;
    private readonly byte[] _table = new byte[5 + (MigrationStream.PagesPerFrame * 8)];
    private readonly byte[] _data = new byte[MigrationStream.PagesPerFrame * MigrationStream.PageSize];
    private int _entries;
    private int _dataPages;

    public long BytesSent { get; private set; }

    public long PagesSent { get; private set; }

    public long ZeroPagesSent { get; private set; }

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

        await EndFrameAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Sends the pages set in <paramref name="dirty"/> (one bitmap per memory region); a zero page as a marker.</summary>
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

        await EndFrameAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Sends the machine's description (a snapshot with that section alone) for the receiver to build the machine from.</summary>
    public Task SendMachineAsync(ReadOnlyMemory<byte> description, CancellationToken cancellationToken) =>
        SendBlobAsync(MigrationStream.MachineFrame, description, cancellationToken);

    /// <summary>Sends the machine state and pushes everything buffered to the receiver.</summary>
    public async Task SendStateAsync(ReadOnlyMemory<byte> state, CancellationToken cancellationToken)
    {
        await SendBlobAsync(MigrationStream.StateFrame, state, cancellationToken).ConfigureAwait(false);
        await PushAsync(cancellationToken).ConfigureAwait(false);
        await stream.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Tells the receiver the migration is abandoned, if the stream still carries anything.</summary>
    public async Task TryAbortAsync(string reason)
    {
        try
        {
            _entries = 0;
            _dataPages = 0;
            var text = System.Text.Encoding.UTF8.GetBytes(reason);
            var frame = new byte[5 + text.Length];
            frame[0] = MigrationStream.AbortFrame;
            BinaryPrimitives.WriteInt32LittleEndian(frame.AsSpan(1), text.Length);
            text.CopyTo(frame, 5);
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            await WriteAsync(frame, timeout.Token).ConfigureAwait(false);
            await PushAsync(timeout.Token).ConfigureAwait(false);
            await stream.FlushAsync(timeout.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or NotSupportedException or OperationCanceledException)
        {
            // The stream is what failed; the receiver sees it end.
        }
    }

    private async Task SendBlobAsync(byte kind, ReadOnlyMemory<byte> body, CancellationToken cancellationToken)
    {
        var head = new byte[9];
        head[0] = kind;
        BinaryPrimitives.WriteInt64LittleEndian(head.AsSpan(1), body.Length);
        await WriteAsync(head, cancellationToken).ConfigureAwait(false);
        await WriteAsync(body, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Adds the page at guest address <paramref name="address"/>; the stream names it by its RAM offset <paramref name="ramOffset"/> (see <see cref="RamLayout"/>).</summary>
    private async Task AddPageAsync(ulong address, ulong ramOffset, bool skipZero, CancellationToken cancellationToken)
    {
        var page = _data.AsSpan(_dataPages * MigrationStream.PageSize, MigrationStream.PageSize);
        memory.Read(new GuestAddress(address), page);
        bool zero = !page.ContainsAnyExcept((byte)0);
        if (zero && skipZero)
        {
            return;
        }

        BinaryPrimitives.WriteUInt64LittleEndian(_table.AsSpan(5 + (_entries * 8)), zero ? ramOffset | MigrationStream.ZeroPage : ramOffset);
        _entries++;
        PagesSent++;
        if (zero)
        {
            ZeroPagesSent++;
        }
        else
        {
            _dataPages++;
        }

        if (_entries == MigrationStream.PagesPerFrame)
        {
            await EndFrameAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    private async Task EndFrameAsync(CancellationToken cancellationToken)
    {
        if (_entries == 0)
        {
            return;
        }

        _table[0] = MigrationStream.PagesFrame;
        BinaryPrimitives.WriteInt32LittleEndian(_table.AsSpan(1), _entries);
        int tableLength = 5 + (_entries * 8);
        int dataLength = _dataPages * MigrationStream.PageSize;
        _entries = 0;
        _dataPages = 0;
        await WriteAsync(_table.AsMemory(0, tableLength), cancellationToken).ConfigureAwait(false);
        await WriteAsync(_data.AsMemory(0, dataLength), cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Gathers <paramref name="data"/> into the send buffer, writing the buffer to the stream when it is full: few large writes instead of many small ones.</summary>
    private async Task WriteAsync(ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        BytesSent += data.Length;
        if (_buffered + data.Length > _buffer.Length)
        {
            await PushAsync(cancellationToken).ConfigureAwait(false);
            if (data.Length > _buffer.Length)
            {
                await stream.WriteAsync(data, cancellationToken).ConfigureAwait(false);
                return;
            }
        }

        data.Span.CopyTo(_buffer.AsSpan(_buffered));
        _buffered += data.Length;
    }

    /// <summary>Writes what the send buffer holds to the stream.</summary>
    private async Task PushAsync(CancellationToken cancellationToken)
    {
        if (_buffered > 0)
        {
            int length = _buffered;
            _buffered = 0;
            await stream.WriteAsync(_buffer.AsMemory(0, length), cancellationToken).ConfigureAwait(false);
        }
    }
}
