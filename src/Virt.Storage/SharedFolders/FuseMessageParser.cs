using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Virt.Storage.SharedFolders;

/// <summary>
/// Splits a FUSE request, as the guest wrote it, into its header and arguments, and takes arguments off the front:
/// fixed-size structures, directory entry names and symbolic link targets. Every length is checked against the bytes
/// that are there; nothing here touches the host.
/// </summary>
/// <remarks>
/// Results are errno values (0 for success) that the server sends back to the guest unchanged. Names are raw bytes
/// (Linux names are not necessarily UTF-8) and are never turned into strings or paths.
/// </remarks>
internal static class FuseMessageParser
{
    /// <summary>
    /// Reads the header of <paramref name="message"/> and returns its arguments in <paramref name="body"/>: the bytes
    /// after the header up to the header's length, without the request extensions (<c>total_extlen</c>) at the end.
    /// </summary>
    /// <returns>0, or EINVAL when the message is shorter than a header or its length field disagrees with it.</returns>
    public static int Parse(ReadOnlySpan<byte> message, out FuseInHeader header, out ReadOnlySpan<byte> body)
    {
        body = default;
        if (message.Length < Fuse.InHeaderSize)
        {
            header = default;
            if (message.Length >= 16)
            {
                header.Unique = MemoryMarshal.Read<ulong>(message[8..]);
            }

            return Fuse.EINVAL;
        }

        header = MemoryMarshal.Read<FuseInHeader>(message);
        if (header.Length < Fuse.InHeaderSize || header.Length > (uint)message.Length)
        {
            return Fuse.EINVAL;
        }

        int extensions = header.TotalExtensionLength * 8;
        int argumentLength = (int)header.Length - Fuse.InHeaderSize - extensions;
        if (argumentLength < 0)
        {
            return Fuse.EINVAL;
        }

        body = message.Slice(Fuse.InHeaderSize, argumentLength);
        return 0;
    }

    /// <summary>Takes a <typeparamref name="T"/> off the front of <paramref name="body"/>; false when too few bytes remain.</summary>
    public static bool TryTake<T>(scoped ref ReadOnlySpan<byte> body, out T value)
        where T : unmanaged
    {
        int size = Unsafe.SizeOf<T>();
        if (body.Length < size)
        {
            value = default;
            return false;
        }

        value = MemoryMarshal.Read<T>(body);
        body = body[size..];
        return true;
    }

    /// <summary>
    /// Takes a NUL-terminated directory entry name off the front of <paramref name="body"/>: 1 to 255 bytes, no
    /// <c>/</c>, not <c>.</c> or <c>..</c>. With <paramref name="last"/> the NUL must be the last byte of the request.
    /// </summary>
    /// <returns>0; EINVAL for a missing terminator, an empty name, a slash, <c>.</c>, <c>..</c> or trailing bytes; ENAMETOOLONG past 255 bytes.</returns>
    public static int TakeName(scoped ref ReadOnlySpan<byte> body, out ReadOnlySpan<byte> name, bool last = true)
    {
        name = default;
        int end = body.IndexOf((byte)0);
        if (end < 0)
        {
            return body.Length > Fuse.NameMax ? Fuse.ENAMETOOLONG : Fuse.EINVAL;
        }

        var candidate = body[..end];
        if (candidate.Length > Fuse.NameMax)
        {
            return Fuse.ENAMETOOLONG;
        }

        if (candidate.Length == 0 || candidate.Contains((byte)'/') || candidate.SequenceEqual("."u8) || candidate.SequenceEqual(".."u8))
        {
            return Fuse.EINVAL;
        }

        var rest = body[(end + 1)..];
        if (last && !rest.IsEmpty)
        {
            return Fuse.EINVAL;
        }

        name = candidate;
        body = rest;
        return 0;
    }

    /// <summary>
    /// Takes a NUL-terminated symbolic link target (1 to 4095 bytes, which must end the request) off the front of
    /// <paramref name="body"/>. A target is data stored in the link; the server never follows it.
    /// </summary>
    /// <returns>0; EINVAL for a missing terminator, an empty target or trailing bytes; ENAMETOOLONG past 4095 bytes.</returns>
    public static int TakeLinkTarget(scoped ref ReadOnlySpan<byte> body, out ReadOnlySpan<byte> target)
    {
        target = default;
        int end = body.IndexOf((byte)0);
        if (end < 0)
        {
            return body.Length > Fuse.PathMax ? Fuse.ENAMETOOLONG : Fuse.EINVAL;
        }

        if (end > Fuse.PathMax)
        {
            return Fuse.ENAMETOOLONG;
        }

        if (end == 0 || end + 1 != body.Length)
        {
            return Fuse.EINVAL;
        }

        target = body[..end];
        body = default;
        return 0;
    }
}
