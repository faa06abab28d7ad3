using System.Text;

namespace Virt;

/// <summary>A write-only stream that decodes UTF-8 bytes and writes the text to a <see cref="TextWriter"/>.</summary>
internal sealed class TextWriterStream : Stream
{
    private readonly TextWriter _writer;
    private readonly Decoder _decoder = new UTF8Encoding(false).GetDecoder();
    private readonly Lock _lock = new();

    public TextWriterStream(TextWriter writer) => _writer = writer;

    public override bool CanRead => false;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override void Flush()
    {
        lock (_lock)
        {
            _writer.Flush();
        }
    }

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        lock (_lock)
        {
            Span<char> chars = stackalloc char[256];
            while (!buffer.IsEmpty)
            {
                int take = Math.Min(buffer.Length, 128);
                _decoder.Convert(buffer[..take], chars, false, out int used, out int produced, out _);
                _writer.Write(chars[..produced]);
                buffer = buffer[used..];
            }
        }
    }
}
