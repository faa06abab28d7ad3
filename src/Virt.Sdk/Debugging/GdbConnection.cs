using System.Text;
using System.Threading.Channels;

namespace Virt.Debugging;

/// <summary>What arrives from GDB: a packet's payload (checksum verified), or the interrupt byte (Ctrl-C, 0x03).</summary>
internal readonly record struct GdbInput(string? Packet)
{
    public bool IsInterrupt => Packet is null;
}

/// <summary>
/// The GDB remote serial protocol's framing (<c>$payload#cs</c>, acknowledgements, the interrupt byte) over a stream.
/// A reader task turns the stream into <see cref="GdbInput"/>s; packets are capped in size, so a hostile or broken
/// client cannot make the host buffer without limit.
/// </summary>
internal sealed class GdbConnection : IDisposable
{
    /// <summary>The largest packet the stub accepts (and announces as PacketSize).</summary>
    internal const int MaxPacket = 0x4000;

    private readonly Stream _stream;
    private readonly Channel<GdbInput> _inputs = Channel.CreateBounded<GdbInput>(new BoundedChannelOptions(64) { SingleReader = true, SingleWriter = true });
    private readonly SemaphoreSlim _writeLock = new(1, 1);
    private volatile bool _noAck;

    public GdbConnection(Stream stream) => _stream = stream;

    public ChannelReader<GdbInput> Inputs => _inputs.Reader;

    /// <inheritdoc />
    public void Dispose() => _writeLock.Dispose();

    /// <summary>After <c>QStartNoAckMode</c>: neither side sends '+'.</summary>
    public void DisableAcks() => _noAck = true;

    /// <summary>Reads the stream until it ends, then completes <see cref="Inputs"/>.</summary>
    public async Task ReadLoopAsync(CancellationToken cancellationToken)
    {
        var buffer = new byte[4096];
        var packet = new StringBuilder();
        int state = 0; // 0: between packets, 1: payload, 2: first checksum digit, 3: second checksum digit
        int sum = 0;
        int expected = 0;
        bool escape = false;
        try
        {
            while (true)
            {
                int n = await _stream.ReadAsync(buffer, cancellationToken).ConfigureAwait(false);
                if (n == 0)
                {
                    break;
                }

                for (int i = 0; i < n; i++)
                {
                    byte b = buffer[i];
                    switch (state)
                    {
                        case 0:
                            if (b == 0x03)
                            {
                                await _inputs.Writer.WriteAsync(new GdbInput(null), cancellationToken).ConfigureAwait(false);
                            }
                            else if (b == (byte)'$')
                            {
                                packet.Clear();
                                sum = 0;
                                escape = false;
                                state = 1;
                            }

                            break; // '+', '-' and noise between packets are ignored
                        case 1:
                            if (b == (byte)'#')
                            {
                                state = 2;
                                break;
                            }

                            sum += b;
                            if (packet.Length >= MaxPacket)
                            {
                                state = 0; // oversized: dropped, GDB gets a '-' on its retry's checksum
                                await SendRawAsync("-"u8.ToArray(), cancellationToken).ConfigureAwait(false);
                                break;
                            }

                            // Binary payloads ('X') escape '#', '$', '}' and '*' as '}' followed by the byte XOR 0x20.
                            if (escape)
                            {
                                packet.Append((char)(b ^ 0x20));
                                escape = false;
                            }
                            else if (b == (byte)'}')
                            {
                                escape = true;
                            }
                            else
                            {
                                packet.Append((char)b);
                            }

                            break;
                        case 2:
                            expected = HexValue(b) << 4;
                            state = 3;
                            break;
                        default:
                            expected |= HexValue(b);
                            state = 0;
                            if ((sum & 0xFF) != expected)
                            {
                                if (!_noAck)
                                {
                                    await SendRawAsync("-"u8.ToArray(), cancellationToken).ConfigureAwait(false);
                                }

                                break;
                            }

                            if (!_noAck)
                            {
                                await SendRawAsync("+"u8.ToArray(), cancellationToken).ConfigureAwait(false);
                            }

                            await _inputs.Writer.WriteAsync(new GdbInput(packet.ToString()), cancellationToken).ConfigureAwait(false);
                            break;
                    }
                }
            }
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or ObjectDisposedException)
        {
            // The client went away or the server is closing: the session ends below.
        }
        finally
        {
            _inputs.Writer.TryComplete();
        }
    }

    private static int HexValue(byte b) => b switch
    {
        >= (byte)'0' and <= (byte)'9' => b - '0',
        >= (byte)'a' and <= (byte)'f' => b - 'a' + 10,
        >= (byte)'A' and <= (byte)'F' => b - 'A' + 10,
        _ => 0x100, // never matches a checksum
    };

    /// <summary>Sends one packet, escaping the bytes the protocol reserves.</summary>
    public Task SendAsync(string payload, CancellationToken cancellationToken)
    {
        var bytes = new List<byte>(payload.Length + 4) { (byte)'$' };
        int sum = 0;
        foreach (char c in payload)
        {
            byte b = (byte)c;
            if (b is (byte)'#' or (byte)'$' or (byte)'}' or (byte)'*')
            {
                bytes.Add((byte)'}');
                sum += '}';
                b ^= 0x20;
            }

            bytes.Add(b);
            sum += b;
        }

        bytes.Add((byte)'#');
        bytes.AddRange(Encoding.ASCII.GetBytes((sum & 0xFF).ToString("x2", System.Globalization.CultureInfo.InvariantCulture)));
        return SendRawAsync([.. bytes], cancellationToken);
    }

    private async Task SendRawAsync(byte[] data, CancellationToken cancellationToken)
    {
        await _writeLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await _stream.WriteAsync(data, cancellationToken).ConfigureAwait(false);
            await _stream.FlushAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _writeLock.Release();
        }
    }
}
