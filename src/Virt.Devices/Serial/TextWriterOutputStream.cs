using System.Text;

namespace Virt.Devices;

/// <summary>A write-only stream that decodes UTF-8 incrementally (a character may arrive one byte per port write) into a <see cref="TextWriter"/>.</summary>
internal sealed class TextWriterOutputStream(TextWriter writer) : Stream
{
    private readonly Decoder _decoder = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: false).GetDecoder();
    private readonly char[] _chars = new char[64];

    public override bool CanRead => false;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    public override void Flush() => writer.Flush();

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void WriteByte(byte value) => Write([value]);

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        while (!buffer.IsEmpty)
        {
            _decoder.Convert(buffer, _chars, flush: false, out int bytesUsed, out int charsUsed, out _);
            if (charsUsed > 0)
            {
                writer.Write(_chars, 0, charsUsed);
            }

            buffer = buffer[bytesUsed..];
        }
    }
}
