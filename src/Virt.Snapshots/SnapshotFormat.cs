namespace Virt.Snapshots;

/// <summary>
/// The layout of a snapshot file (version 1). All integers are little-endian.
/// <code>
/// 0x0000  header (128 bytes, zero padding to 4 KiB)
///         magic "VIRTSNAP", format version u32, header size u32, section count u32, flags u32,
///         section table offset u64, section table length u64, creation time (Unix ms) i64,
///         reserved to byte 120, header checksum u64 (XxHash64 of bytes 0-119)
/// 0x1000  section table: one 96-byte entry per section
///         name (64 bytes UTF-8, zero-padded), kind u32, version u32, offset u64, length u64, checksum u64
/// ...     state sections (kind 0): the component's bytes; checksum = XxHash64 of them
///         memory sections (kind 1): 4 KiB-aligned offset, length = the region's size; pages that were zero are holes
///         (a sparse file); checksum = XxHash64 of the non-zero pages in order (checked by SnapshotReader.VerifyMemory)
/// </code>
/// </summary>
public static class SnapshotFormat
{
    /// <summary>The file's first eight bytes.</summary>
    public static ReadOnlySpan<byte> Magic => "VIRTSNAP"u8;

    /// <summary>The format version this build writes and reads.</summary>
    public const int Version = 1;

    /// <summary>Bytes of the header proper.</summary>
    public const int HeaderSize = 128;

    /// <summary>Bytes of one section table entry.</summary>
    public const int SectionEntrySize = 96;

    /// <summary>Longest section name in bytes (UTF-8).</summary>
    public const int MaxNameBytes = 64;

    /// <summary>Page size: memory sections start at multiples of it and hold whole pages.</summary>
    public const int PageSize = 4096;

    /// <summary>Most sections a file may have.</summary>
    public const int MaxSections = 65536;

    /// <summary>Largest state section (memory sections are not bounded by this).</summary>
    public const long MaxStateSectionBytes = 256L << 20;
}

/// <summary>What a section holds.</summary>
public enum SnapshotSectionKind
{
    /// <summary>A component's state, as its <see cref="IPersistentState"/> wrote it.</summary>
    State = 0,

    /// <summary>A guest memory region, page for page.</summary>
    Memory = 1,
}

/// <summary>One entry of a snapshot's section table.</summary>
/// <param name="Name">The section name (unique in the file).</param>
/// <param name="Kind">What it holds.</param>
/// <param name="Version">The layout version its writer gave it.</param>
/// <param name="Offset">Where it starts in the file.</param>
/// <param name="Length">Its length in bytes.</param>
/// <param name="Checksum">XxHash64 of its bytes (of its non-zero pages, for memory).</param>
public sealed record SnapshotSection(string Name, SnapshotSectionKind Kind, int Version, long Offset, long Length, ulong Checksum);
