using System.Text;

namespace Virt.Testing;

/// <summary>
/// A write-only stream for a guest's console that keeps everything written and lets a test wait for the next line
/// it expects: <see cref="WaitForAsync"/> looks only past the end of the previous match, so the same line can be
/// waited for twice.
/// </summary>
public sealed class TranscriptStream : Stream
{
    private readonly StringBuilder _text = new();
    private readonly Lock _sync = new();
    private TaskCompletionSource _written = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _consumed;

    /// <summary>Everything written so far.</summary>
    public string Text
    {
        get
        {
            lock (_sync)
            {
                return _text.ToString();
            }
        }
    }

    /// <summary>Waits until <paramref name="expected"/> appears after the previous match and returns the text up to its end.</summary>
    /// <exception cref="TimeoutException">It did not appear within <paramref name="timeout"/>; the message has what did.</exception>
    public async Task<string> WaitForAsync(string expected, TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(timeout);
        while (true)
        {
            Task written;
            lock (_sync)
            {
                string all = _text.ToString();
                int at = all.IndexOf(expected, _consumed, StringComparison.Ordinal);
                if (at >= 0)
                {
                    string seen = all[_consumed..(at + expected.Length)];
                    _consumed = at + expected.Length;
                    return seen;
                }

                written = _written.Task;
            }

            try
            {
                await written.WaitAsync(deadline.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                throw new TimeoutException($"'{expected.ReplaceLineEndings("\\n")}' did not appear on the console within {timeout}; after the previous match it showed: '{Text[_consumed..].ReplaceLineEndings("\\n")}'");
            }
        }
    }

    /// <inheritdoc/>
    public override bool CanRead => false;

    /// <inheritdoc/>
    public override bool CanSeek => false;

    /// <inheritdoc/>
    public override bool CanWrite => true;

    /// <inheritdoc/>
    public override long Length => throw new NotSupportedException();

    /// <inheritdoc/>
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    /// <inheritdoc/>
    public override void Flush()
    {
    }

    /// <inheritdoc/>
    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    /// <inheritdoc/>
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    /// <inheritdoc/>
    public override void SetLength(long value) => throw new NotSupportedException();

    /// <inheritdoc/>
    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    /// <inheritdoc/>
    public override void Write(ReadOnlySpan<byte> buffer)
    {
        TaskCompletionSource written;
        lock (_sync)
        {
            _text.Append(Encoding.Latin1.GetString(buffer));
            written = _written;
            _written = new(TaskCreationOptions.RunContinuationsAsynchronously);
        }

        written.TrySetResult();
    }
}
