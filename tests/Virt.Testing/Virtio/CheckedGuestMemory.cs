using Virt.Memory;

namespace Virt.Testing.Virtio;

/// <summary>
/// Wraps guest memory and records every read or write a device attempts outside guest RAM. A device that
/// validates guest-supplied addresses before using them never produces a violation, even when the underlying
/// memory would have refused the access.
/// </summary>
public sealed class CheckedGuestMemory : IGuestMemory
{
    private readonly IGuestMemory _inner;
    private int _violations;

    /// <summary>Wraps <paramref name="inner"/>.</summary>
    public CheckedGuestMemory(IGuestMemory inner) => _inner = inner;

    /// <summary>Number of accesses attempted outside guest RAM.</summary>
    public int Violations => Volatile.Read(ref _violations);

    /// <summary>The last violation, for the failure message.</summary>
    public string? LastViolation { get; private set; }

    /// <inheritdoc />
    public IReadOnlyList<GuestMemoryRegionInfo> Regions => _inner.Regions;

    /// <inheritdoc />
    public ulong TotalSize => _inner.TotalSize;

    /// <inheritdoc />
    public bool Contains(GuestAddress address, ulong length) => _inner.Contains(address, length);

    /// <inheritdoc />
    public void Read(GuestAddress address, Span<byte> destination)
    {
        Check(address, destination.Length, "read");
        _inner.Read(address, destination);
    }

    /// <inheritdoc />
    public void Write(GuestAddress address, ReadOnlySpan<byte> source)
    {
        Check(address, source.Length, "write");
        _inner.Write(address, source);
    }

    /// <inheritdoc />
    public bool TryRead(GuestAddress address, Span<byte> destination)
    {
        Check(address, destination.Length, "read");
        return _inner.TryRead(address, destination);
    }

    /// <inheritdoc />
    public bool TryWrite(GuestAddress address, ReadOnlySpan<byte> source)
    {
        Check(address, source.Length, "write");
        return _inner.TryWrite(address, source);
    }

    /// <inheritdoc />
    public T Read<T>(GuestAddress address) where T : unmanaged
    {
        Check(address, System.Runtime.CompilerServices.Unsafe.SizeOf<T>(), "read");
        return _inner.Read<T>(address);
    }

    /// <inheritdoc />
    public void Write<T>(GuestAddress address, T value) where T : unmanaged
    {
        Check(address, System.Runtime.CompilerServices.Unsafe.SizeOf<T>(), "write");
        _inner.Write(address, value);
    }

    /// <inheritdoc />
    public Span<byte> GetSpan(GuestAddress address, int length, bool forWrite)
    {
        Check(address, length, "span");
        return _inner.GetSpan(address, length, forWrite);
    }

    /// <inheritdoc />
    public bool TryGetSpan(GuestAddress address, int length, bool forWrite, out Span<byte> span)
    {
        Check(address, length, "span");
        return _inner.TryGetSpan(address, length, forWrite, out span);
    }

    private void Check(GuestAddress address, long length, string kind)
    {
        if (length > 0 && (length < 0 || !_inner.Contains(address, (ulong)length)))
        {
            Interlocked.Increment(ref _violations);
            LastViolation = $"{kind} of {length} byte(s) at {address}";
        }
    }
}

/// <summary>A logger that keeps every message, for asserting on logged reasons.</summary>
public sealed class ListLogger : Microsoft.Extensions.Logging.ILogger
{
    private readonly List<string> _messages = [];

    /// <summary>The messages logged so far.</summary>
    public IReadOnlyList<string> Messages
    {
        get
        {
            lock (_messages)
            {
                return [.. _messages];
            }
        }
    }

    /// <inheritdoc />
    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    /// <inheritdoc />
    public bool IsEnabled(Microsoft.Extensions.Logging.LogLevel logLevel) => true;

    /// <inheritdoc />
    public void Log<TState>(Microsoft.Extensions.Logging.LogLevel logLevel, Microsoft.Extensions.Logging.EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        ArgumentNullException.ThrowIfNull(formatter);
        lock (_messages)
        {
            _messages.Add(formatter(state, exception));
        }
    }
}
