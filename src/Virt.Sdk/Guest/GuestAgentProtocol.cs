using System.Buffers.Binary;
using System.Text;

namespace Virt;

/// <summary>
/// The guest agent's wire format (scripts/virt-agent.c): frames of a type byte, a little-endian u32 length and that
/// many bytes. One request per connection; see docs/linux-guests.md for the exchanges.
/// </summary>
internal static class GuestAgentProtocol
{
    /// <summary>The largest frame payload either side accepts.</summary>
    public const int MaxPayload = 1 << 20;

    /// <summary>The chunk size for data frames (stdin, file contents).</summary>
    public const int ChunkSize = 60 * 1024;

    public const byte Hello = (byte)'H';
    public const byte Exec = (byte)'E';
    public const byte Stdin = (byte)'I';
    public const byte Stdout = (byte)'O';
    public const byte Stderr = (byte)'R';
    public const byte ExitStatus = (byte)'X';
    public const byte Put = (byte)'P';
    public const byte Get = (byte)'G';
    public const byte Data = (byte)'D';
    public const byte Ok = (byte)'K';
    public const byte Failure = (byte)'F';

    /// <summary>Strings as the agent reads them: a u32 count, then each string NUL-terminated.</summary>
    public static void WriteStrings(MemoryStream to, IReadOnlyCollection<string> strings)
    {
        Span<byte> count = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(count, (uint)strings.Count);
        to.Write(count);
        foreach (string s in strings)
        {
            WriteString(to, s);
        }
    }

    /// <summary>A NUL-terminated UTF-8 string.</summary>
    public static void WriteString(MemoryStream to, string s)
    {
        if (s.Contains('\0', StringComparison.Ordinal))
        {
            throw new ArgumentException($"'{s.Replace("\0", "\\0", StringComparison.Ordinal)}' contains a NUL character, which a guest argument, variable or path cannot hold.");
        }

        to.Write(Encoding.UTF8.GetBytes(s));
        to.WriteByte(0);
    }
}

/// <summary>One connection to the guest agent: writes and reads <see cref="GuestAgentProtocol"/> frames.</summary>
internal sealed class GuestAgentChannel(Stream stream) : IAsyncDisposable
{
    private readonly byte[] _header = new byte[5];
    private byte[] _payload = new byte[GuestAgentProtocol.ChunkSize];

    /// <summary>The payload of the frame read last (its first Length bytes).</summary>
    public byte[] Payload => _payload;

    public async ValueTask WriteFrameAsync(byte type, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        byte[] frame = new byte[5 + payload.Length];
        frame[0] = type;
        BinaryPrimitives.WriteUInt32LittleEndian(frame.AsSpan(1), (uint)payload.Length);
        payload.CopyTo(frame.AsMemory(5));
        await stream.WriteAsync(frame, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Reads one frame; its payload is in the first bytes of <see cref="Payload"/>.</summary>
    /// <exception cref="GuestAgentException">The agent closed the connection mid-exchange or sent an oversized frame.</exception>
    public async ValueTask<(byte Type, int Length)> ReadFrameAsync(CancellationToken cancellationToken)
    {
        try
        {
            await stream.ReadExactlyAsync(_header, cancellationToken).ConfigureAwait(false);
            uint length = BinaryPrimitives.ReadUInt32LittleEndian(_header.AsSpan(1));
            if (length > GuestAgentProtocol.MaxPayload)
            {
                throw new GuestAgentException($"The guest agent sent a frame of {length} bytes, more than the {GuestAgentProtocol.MaxPayload} allowed.");
            }

            if (_payload.Length < length)
            {
                _payload = new byte[length];
            }

            await stream.ReadExactlyAsync(_payload.AsMemory(0, (int)length), cancellationToken).ConfigureAwait(false);
            return (_header[0], (int)length);
        }
        catch (EndOfStreamException e)
        {
            throw new GuestAgentException("The guest agent closed the connection before it finished answering (did the agent or the guest stop?).", e);
        }
    }

    /// <summary>The text of a failure frame just read.</summary>
    public string FailureMessage(int length) => Encoding.UTF8.GetString(_payload, 0, length);

    public ValueTask DisposeAsync() => stream.DisposeAsync();
}
