using System.Text;

namespace Virt.Cli;

/// <summary>Passes console output through and remembers the status from the guest kit's "VIRT-EXIT-STATUS=n" line.</summary>
internal sealed class ExitStatusScanner(Stream inner) : Stream
{
    private const string Marker = "VIRT-EXIT-STATUS=";
    private const int MaxLine = 256;
    private readonly StringBuilder _line = new();

    /// <summary>The guest command's exit status, once printed.</summary>
    public int? Status { get; private set; }

    public override bool CanRead => false;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        inner.Write(buffer);
        foreach (byte b in buffer)
        {
            if (b == (byte)'\n')
            {
                string line = _line.ToString().TrimEnd('\r');
                if (line.StartsWith(Marker, StringComparison.Ordinal)
                    && int.TryParse(line.AsSpan(Marker.Length), System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out int status))
                {
                    Status = status;
                }

                _line.Clear();
            }
            else if (_line.Length < MaxLine)
            {
                _line.Append((char)b);
            }
        }
    }

    public override void Flush() => inner.Flush();

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();
}
