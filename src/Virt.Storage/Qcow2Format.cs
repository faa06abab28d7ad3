using System.Buffers.Binary;
using System.Text;

namespace Virt.Storage;

/// <summary>Constants and the header layout of the qcow2 format (versions 2 and 3), and image creation.</summary>
internal static class Qcow2Format
{
    public const uint Magic = 0x514649fb; // "QFI\xfb"
    public const int V2HeaderLength = 72;
    public const int V3HeaderLength = 104;
    public const int MinClusterBits = 9;
    public const int MaxClusterBits = 21;
    public const int DefaultClusterBits = 16;

    /// <summary>The smallest cluster an image with extended L2 entries may have (subclusters of 512 bytes).</summary>
    public const int MinExtendedClusterBits = 14;

    /// <summary>Subclusters per cluster in an image with extended L2 entries.</summary>
    public const int Subclusters = 32;

    /// <summary>In an extended L2 entry's bitmap, every subcluster allocated (bits 0-31).</summary>
    public const ulong AllSubclustersAllocated = 0xffff_ffffUL;

    /// <summary>In an extended L2 entry's bitmap, every subcluster reading as zeroes (bits 32-63).</summary>
    public const ulong AllSubclustersZero = 0xffff_ffff_0000_0000UL;
    public const int MaxBackingNameBytes = 1023;
    public const long MaxL1Bytes = 32L << 20;
    public const long MaxRefTableBytes = 8L << 20;
    public const int MaxSnapshots = 65536;
    public const int MaxSnapshotExtraData = 1024;
    public const long MaxVirtualSize = 1L << 55;

    // Header field offsets.
    public const int OffVersion = 4;
    public const int OffBackingOffset = 8;
    public const int OffBackingSize = 16;
    public const int OffClusterBits = 20;
    public const int OffSize = 24;
    public const int OffCryptMethod = 32;
    public const int OffL1Size = 36;
    public const int OffL1Offset = 40;
    public const int OffRefTableOffset = 48;
    public const int OffRefTableClusters = 56;
    public const int OffSnapshotCount = 60;
    public const int OffSnapshotsOffset = 64;
    public const int OffIncompatible = 72;
    public const int OffCompatible = 80;
    public const int OffAutoclear = 88;
    public const int OffRefcountOrder = 96;
    public const int OffHeaderLength = 100;
    public const int OffCompressionType = 104;

    /// <summary>compression_type 1: compressed clusters are zstd frames.</summary>
    public const byte CompressionZstd = 1;

    // Incompatible feature bits.
    public const ulong IncompatDirty = 1UL << 0;
    public const ulong IncompatCorrupt = 1UL << 1;
    public const ulong IncompatExternalData = 1UL << 2;
    public const ulong IncompatCompressionType = 1UL << 3;
    public const ulong IncompatExtendedL2 = 1UL << 4;

    // Header extensions.
    public const uint ExtEnd = 0;
    public const uint ExtBackingFormat = 0xe2792aca;
    public const uint ExtFeatureNames = 0x6803f857;

    // Table entries.
    public const ulong OffsetMask = 0x00ff_ffff_ffff_fe00UL;
    public const ulong Copied = 1UL << 63;
    public const ulong Compressed = 1UL << 62;
    public const ulong ZeroFlag = 1UL;
    public const ulong L1Reserved = 0x7f00_0000_0000_01ffUL;
    public const ulong L2Reserved = 0x3f00_0000_0000_01feUL;
    public const ulong RefTableReserved = 0x0000_0000_0000_01ffUL;

    /// <summary>Whether the first bytes of a file are a qcow2 header.</summary>
    public static bool HasMagic(ReadOnlySpan<byte> start) => start.Length >= 4 && BinaryPrimitives.ReadUInt32BigEndian(start) == Magic;

    /// <summary>L1 entries needed for <paramref name="size"/> bytes (extended L2 entries are 16 bytes, not 8).</summary>
    public static long L1EntriesFor(long size, int clusterBits, bool extendedL2 = false)
    {
        int l2Bits = clusterBits - (extendedL2 ? 4 : 3);
        long perL1 = 1L << (clusterBits + l2Bits);
        return (size + perL1 - 1) / perL1;
    }

    /// <summary>
    /// Writes a new, empty version 3 image to <paramref name="store"/> (which must be empty): header, refcount table,
    /// refcount blocks covering the metadata, and a zeroed L1 table, every metadata cluster with refcount 1.
    /// With <paramref name="extendedL2"/>, L2 entries carry subcluster bitmaps (incompatible feature bit 4).
    /// </summary>
    public static void Create(ImageStore store, long size, int clusterBits, string? backingPath, string? backingFormat, bool extendedL2 = false)
    {
        int cs = 1 << clusterBits;
        const int refcountOrder = 4;
        long entriesPerBlock = (long)cs * 8 / (1 << refcountOrder);
        long l1Entries = L1EntriesFor(size, clusterBits, extendedL2);
        long l1Clusters = Math.Max(1, (l1Entries * 8 + cs - 1) / cs);

        // Header, refcount table, refcount blocks, L1: find the sizes that cover themselves.
        long tableClusters = 1, blocks = 1;
        while (true)
        {
            long total = 1 + tableClusters + blocks + l1Clusters;
            long needBlocks = (total + entriesPerBlock - 1) / entriesPerBlock;
            long needTable = Math.Max(1, (needBlocks * 8 + cs - 1) / cs);
            if (needBlocks == blocks && needTable == tableClusters)
            {
                break;
            }

            blocks = needBlocks;
            tableClusters = needTable;
        }

        long tableAt = 1, blocksAt = tableAt + tableClusters, l1At = blocksAt + blocks;
        long used = l1At + l1Clusters;

        var header = new byte[cs];
        var h = header.AsSpan();
        BinaryPrimitives.WriteUInt32BigEndian(h, Magic);
        BinaryPrimitives.WriteUInt32BigEndian(h[OffVersion..], 3);
        BinaryPrimitives.WriteUInt32BigEndian(h[OffClusterBits..], (uint)clusterBits);
        BinaryPrimitives.WriteUInt64BigEndian(h[OffSize..], (ulong)size);
        BinaryPrimitives.WriteUInt32BigEndian(h[OffL1Size..], (uint)l1Entries);
        BinaryPrimitives.WriteUInt64BigEndian(h[OffL1Offset..], (ulong)(l1At * cs));
        BinaryPrimitives.WriteUInt64BigEndian(h[OffRefTableOffset..], (ulong)(tableAt * cs));
        BinaryPrimitives.WriteUInt32BigEndian(h[OffRefTableClusters..], (uint)tableClusters);
        BinaryPrimitives.WriteUInt32BigEndian(h[OffRefcountOrder..], refcountOrder);
        if (extendedL2)
        {
            BinaryPrimitives.WriteUInt64BigEndian(h[OffIncompatible..], IncompatExtendedL2);
        }

        BinaryPrimitives.WriteUInt32BigEndian(h[OffHeaderLength..], 112);
        int pos = 112;
        if (backingPath is not null)
        {
            byte[] name = Encoding.UTF8.GetBytes(backingPath);
            byte[]? format = backingFormat is null ? null : Encoding.ASCII.GetBytes(backingFormat);
            if (format is not null)
            {
                BinaryPrimitives.WriteUInt32BigEndian(h[pos..], ExtBackingFormat);
                BinaryPrimitives.WriteUInt32BigEndian(h[(pos + 4)..], (uint)format.Length);
                format.CopyTo(h[(pos + 8)..]);
                pos += 8 + ((format.Length + 7) & ~7);
            }

            pos += 8; // end-of-extensions marker (zeroes)
            if (name.Length > MaxBackingNameBytes || pos + name.Length > cs)
            {
                throw new ArgumentException($"The backing file path is {name.Length} bytes long; qcow2 allows at most {MaxBackingNameBytes}. Use a shorter (e.g. relative) path.", nameof(backingPath));
            }

            name.CopyTo(h[pos..]);
            BinaryPrimitives.WriteUInt64BigEndian(h[OffBackingOffset..], (ulong)pos);
            BinaryPrimitives.WriteUInt32BigEndian(h[OffBackingSize..], (uint)name.Length);
        }

        var table = new byte[tableClusters * cs];
        for (long b = 0; b < blocks; b++)
        {
            BinaryPrimitives.WriteUInt64BigEndian(table.AsSpan((int)(b * 8)), (ulong)((blocksAt + b) * cs));
        }

        var refBlocks = new byte[blocks * cs];
        for (long c = 0; c < used; c++)
        {
            BinaryPrimitives.WriteUInt16BigEndian(refBlocks.AsSpan((int)(c * 2)), 1);
        }

        store.Write(tableAt * cs, table);
        store.Write(blocksAt * cs, refBlocks);
        store.Write(l1At * cs, new byte[l1Clusters * cs]);
        store.Write(0, header);
        store.Flush();
    }
}

/// <summary>An internal snapshot recorded in a qcow2 image (listed; not created or applied by this library).</summary>
/// <param name="Id">The snapshot's unique id string.</param>
/// <param name="Name">Its name.</param>
/// <param name="Date">When it was taken.</param>
/// <param name="VmStateSize">Bytes of saved VM state (0 for a disk-only snapshot).</param>
/// <param name="DiskSize">The virtual disk size at the time, when the image records it (version 3).</param>
public sealed record Qcow2Snapshot(string Id, string Name, DateTimeOffset Date, long VmStateSize, long? DiskSize);
