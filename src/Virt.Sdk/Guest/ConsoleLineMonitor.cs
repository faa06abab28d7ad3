using System.Text;
using System.Text.RegularExpressions;

namespace Virt;

/// <summary>
/// The serial console's output on its way to the caller's stream or writer, cut into lines so that
/// VirtualMachine.WaitForConsoleLineAsync can wait for one. Keeps
/// the last <see cref="HistoryLines"/> lines, so a wait that starts after its line went by still sees it.
/// </summary>
/// <remarks>
/// Written on vCPU threads (the UART), byte by byte or in runs; a completed line is matched against the waiting
/// patterns there, and a matching wait completes asynchronously. Lines longer than 4096 characters are cut.
/// </remarks>
internal sealed class ConsoleLineMonitor : Stream
{
    public const int HistoryLines = 1024;
    private const int MaxLineLength = 4096;

    private readonly Stream? _stream;
    private readonly TextWriter? _writer;
    private readonly Decoder _decoder = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: false).GetDecoder();
    private readonly char[] _chars = new char[256];
    private readonly Lock _sync = new();
    private readonly StringBuilder _line = new();
    private readonly Queue<string> _history = new();
    private readonly List<(Regex Pattern, TaskCompletionSource<string> Done)> _waiters = [];

    public ConsoleLineMonitor(Stream? stream, TextWriter? writer)
    {
        _stream = stream;
        _writer = writer;
    }

    public override bool CanRead => false;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    /// <summary>Waits for a console line (one already printed among the last <see cref="HistoryLines"/>, or a later one) that matches <paramref name="pattern"/>.</summary>
    public async Task<string> WaitForLineAsync(Regex pattern, CancellationToken cancellationToken)
    {
        var done = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_sync)
        {
            foreach (string line in _history)
            {
                if (pattern.IsMatch(line))
                {
                    return line;
                }
            }

            _waiters.Add((pattern, done));
        }

        try
        {
            return await done.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            lock (_sync)
            {
                _waiters.RemoveAll(w => ReferenceEquals(w.Done, done));
            }
        }
    }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void WriteByte(byte value) => Write([value]);

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        _stream?.Write(buffer);
        var bytes = buffer;
        while (!bytes.IsEmpty)
        {
            _decoder.Convert(bytes, _chars, flush: false, out int used, out int produced, out _);
            bytes = bytes[used..];
            _writer?.Write(_chars, 0, produced);
            Collect(_chars.AsSpan(0, produced));
        }
    }

    public override void Flush()
    {
        _stream?.Flush();
        _writer?.Flush();
    }

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    private void Collect(ReadOnlySpan<char> chars)
    {
        lock (_sync)
        {
            foreach (char ch in chars)
            {
                if (ch == '\n')
                {
                    EndLineLocked();
                }
                else if (ch != '\r' && _line.Length < MaxLineLength)
                {
                    _line.Append(ch);
                }
            }
        }
    }

    private void EndLineLocked()
    {
        string line = _line.ToString();
        _line.Clear();
        _history.Enqueue(line);
        if (_history.Count > HistoryLines)
        {
            _history.Dequeue();
        }

        foreach (var (pattern, done) in _waiters)
        {
            if (pattern.IsMatch(line))
            {
                done.TrySetResult(line);
            }
        }
    }
}
