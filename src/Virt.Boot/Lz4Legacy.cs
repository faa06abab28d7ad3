using System.Buffers.Binary;
using System.Runtime.CompilerServices;

namespace Virt.Boot;

/// <summary>
/// Decodes the LZ4 legacy frame that Linux uses for an LZ4-compressed kernel (<c>lz4 -l</c>): the magic 0x184C2102,
/// then blocks, each a 4-byte little-endian compressed size and an LZ4 block that decodes to at most 8 MiB on its
/// own (no block refers to an earlier one). A repeated magic (concatenated frames) is skipped; a zero size or fewer
/// than 4 bytes left ends the stream.
/// </summary>
/// <remarks>
/// Every length and offset is checked against the input and the output span: corrupt input raises
/// <see cref="BootImageException"/> and never reads or writes outside the spans.
/// </remarks>
internal static class Lz4Legacy
{
    /// <summary>The frame's magic number, little-endian at the start.</summary>
    public const uint Magic = 0x184C2102;

    /// <summary>Bytes a block decodes to at most (and exactly, except the last).</summary>
    public const int BlockSize = 8 << 20;

    /// <summary>The largest compressed block that can decode to <see cref="BlockSize"/> bytes (LZ4's compress bound).</summary>
    public const int MaxCompressedBlock = BlockSize + (BlockSize / 255) + 16;

    private const int MinMatch = 4;

    /// <summary>Whether <paramref name="data"/> starts with the legacy frame's magic.</summary>
    public static bool HasMagic(ReadOnlySpan<byte> data) =>
        data.Length >= 4 && BinaryPrimitives.ReadUInt32LittleEndian(data) == Magic;

    /// <summary>Decodes the frame in <paramref name="input"/> into <paramref name="output"/> and returns the bytes written.</summary>
    /// <param name="input">The frame, from its magic to its end.</param>
    /// <param name="output">Where the data goes; decoding more than fits is an error.</param>
    /// <param name="field">The name the exception gives the input (e.g. <c>payload</c>).</param>
    /// <exception cref="BootImageException">The frame has no magic, a block size or a block is corrupt, or the data does not fit in <paramref name="output"/>.</exception>
    public static int Decode(ReadOnlySpan<byte> input, Span<byte> output, string field)
    {
        if (!HasMagic(input))
        {
            throw new BootImageException(field, "the LZ4 stream does not start with the legacy frame magic 0x184c2102.");
        }

        int pos = 4;
        int written = 0;
        int block = 0;
        while (input.Length - pos >= 4)
        {
            uint size = BinaryPrimitives.ReadUInt32LittleEndian(input[pos..]);
            if (size == Magic)
            {
                pos += 4;
                continue;
            }

            if (size == 0)
            {
                break;
            }

            pos += 4;
            if (size > MaxCompressedBlock || size > (uint)(input.Length - pos))
            {
                throw new BootImageException(field, $"LZ4 block {block} at byte {pos - 4} says it is {size} bytes; {input.Length - pos} are left and a block is at most {MaxCompressedBlock}; the stream is truncated or corrupt.");
            }

            var room = output[written..];
            if (room.Length > BlockSize)
            {
                room = room[..BlockSize];
            }

            written += DecodeBlock(input.Slice(pos, (int)size), room, field, block);
            pos += (int)size;
            block++;
        }

        return written;
    }

    /// <summary>Decodes one LZ4 block into <paramref name="dst"/> and returns the bytes written.</summary>
    /// <exception cref="BootImageException">A length or offset is out of bounds, or the block ends inside a sequence.</exception>
    /// <remarks>Compiled optimized at once: it runs once per boot, over tens of megabytes, with no time to tier up.</remarks>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static int DecodeBlock(ReadOnlySpan<byte> src, Span<byte> dst, string field, int block)
    {
        int ip = 0, op = 0;
        while (true)
        {
            if (ip >= src.Length)
            {
                throw Corrupt(field, block, "ends before its last sequence");
            }

            int token = src[ip++];
            int literals = token >> 4;
            if (literals == 15)
            {
                literals = ReadLength(src, ref ip, literals, field, block);
            }

            if (literals > src.Length - ip)
            {
                throw Corrupt(field, block, $"has {literals} literal bytes at input byte {ip} but only {src.Length - ip} remain");
            }

            if (literals > dst.Length - op)
            {
                throw Corrupt(field, block, $"decodes to more than the {dst.Length} bytes it may produce");
            }

            src.Slice(ip, literals).CopyTo(dst[op..]);
            ip += literals;
            op += literals;
            if (ip == src.Length)
            {
                return op; // the last sequence has literals only
            }

            if (src.Length - ip < 2)
            {
                throw Corrupt(field, block, "ends inside a match offset");
            }

            int offset = BinaryPrimitives.ReadUInt16LittleEndian(src[ip..]);
            ip += 2;
            if (offset == 0 || offset > op)
            {
                throw Corrupt(field, block, $"has a match offset of {offset} at output byte {op}, outside the data decoded so far");
            }

            int match = token & 0xF;
            if (match == 15)
            {
                match = ReadLength(src, ref ip, match, field, block);
            }

            match += MinMatch;
            if (match > dst.Length - op)
            {
                throw Corrupt(field, block, $"decodes to more than the {dst.Length} bytes it may produce");
            }

            int from = op - offset;
            if (offset >= match)
            {
                dst.Slice(from, match).CopyTo(dst[op..]);
            }
            else
            {
                // Overlapping copy: the match repeats the last `offset` bytes. Copy whole periods, doubling what is
                // copied each time; the source then always ends where the destination starts.
                int done = 0;
                while (done < match)
                {
                    int n = Math.Min(done + offset, match - done);
                    dst.Slice(from, n).CopyTo(dst[(op + done)..]);
                    done += n;
                }
            }

            op += match;
        }
    }

    private static int ReadLength(ReadOnlySpan<byte> src, ref int ip, int length, string field, int block)
    {
        int b;
        do
        {
            if (ip >= src.Length)
            {
                throw Corrupt(field, block, "ends inside a length");
            }

            b = src[ip++];
            length += b;
            if (length > BlockSize + 15)
            {
                throw Corrupt(field, block, "has a length longer than a block");
            }
        }
        while (b == 255);
        return length;
    }

    private static BootImageException Corrupt(string field, int block, string what) =>
        new(field, $"LZ4 block {block} {what}; the stream is corrupt.");
}
