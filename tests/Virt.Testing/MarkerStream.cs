using System.Text;

namespace Virt.Testing;

/// <summary>
/// A console stream for tests and benchmarks: keeps everything written (when <c>keep</c> is on) and completes
/// <see cref="Seen"/> once <see cref="Marker"/> has gone by, even when it arrives split across writes.
/// </summary>
public sealed class MarkerStream(string marker, bool keep = true) : Stream
{
    private readonly MemoryStream _all = new();
    private readonly StringBuilder _tail = new();

    /// <summary>The text waited for.</summary>
    public string Marker { get; } = marker;

    /// <summary>Completes (off the writer's thread) when <see cref="Marker"/> has been written.</summary>
    public TaskCompletionSource Seen { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Everything written so far, as UTF-8 text (empty when <c>keep</c> is off).</summary>
    public string Text
    {
        get
        {
            lock (_all)
            {
                return Encoding.UTF8.GetString(_all.GetBuffer(), 0, (int)_all.Length);
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
    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    /// <inheritdoc/>
    public override void Write(ReadOnlySpan<byte> buffer)
    {
        lock (_all)
        {
            if (keep)
            {
                _all.Write(buffer);
                CheckWaiters();
            }

            if (Seen.Task.IsCompleted)
            {
                return;
            }

            _tail.Append(Encoding.ASCII.GetString(buffer));
            if (_tail.ToString().Contains(Marker, StringComparison.Ordinal))
            {
                Seen.TrySetResult();
            }
            else if (_tail.Length > 4096)
            {
                _tail.Remove(0, _tail.Length - Marker.Length);
            }
        }
    }

    private readonly List<(string Text, TaskCompletionSource Done)> _waiters = [];

    /// <summary>Completes when <paramref name="text"/> has been written (now or before); needs <c>keep</c>.</summary>
    public Task WaitForAsync(string text, CancellationToken cancellationToken)
    {
        if (!keep)
        {
            throw new InvalidOperationException("WaitForAsync needs a MarkerStream that keeps its text.");
        }

        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_all)
        {
            _waiters.Add((text, done));
            CheckWaiters();
        }

        return done.Task.WaitAsync(cancellationToken);
    }

    private void CheckWaiters()
    {
        if (_waiters.Count == 0)
        {
            return;
        }

        string all = Encoding.UTF8.GetString(_all.GetBuffer(), 0, (int)_all.Length);
        for (int i = _waiters.Count - 1; i >= 0; i--)
        {
            if (all.Contains(_waiters[i].Text, StringComparison.Ordinal))
            {
                _waiters[i].Done.TrySetResult();
                _waiters.RemoveAt(i);
            }
        }
    }

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
}
