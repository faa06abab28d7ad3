using System.Threading.Channels;

namespace Virt.Sandbox;

/// <summary>
/// A fixed set of warm sandboxes built from one builder, for concurrent calls: each call takes an idle
/// sandbox, which resets to its snapshot, serves the call, and goes back to the pool.
/// </summary>
public sealed class SandboxPool : IAsyncDisposable
{
    private readonly Sandbox[] _all;
    private readonly Channel<Sandbox> _idle;

    private SandboxPool(Sandbox[] sandboxes)
    {
        _all = sandboxes;
        _idle = Channel.CreateUnbounded<Sandbox>();
        foreach (var s in sandboxes)
        {
            _idle.Writer.TryWrite(s);
        }
    }

    /// <summary>Number of sandboxes in the pool.</summary>
    public int Size => _all.Length;

    /// <summary>Builds <paramref name="size"/> sandboxes from <paramref name="builder"/> and warms each one up (runs it to its ready point).</summary>
    public static async Task<SandboxPool> CreateAsync(SandboxBuilder builder, int size, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentOutOfRangeException.ThrowIfLessThan(size, 1);
        var sandboxes = new Sandbox[size];
        for (int i = 0; i < size; i++)
        {
            sandboxes[i] = builder.Build();
        }

        await Task.WhenAll(sandboxes.Select(s => s.WarmUpAsync(cancellationToken))).ConfigureAwait(false);
        return new SandboxPool(sandboxes);
    }

    /// <summary>Runs one call on an idle sandbox (waiting for one when all are busy).</summary>
    public async Task<SandboxResult> RunAsync(ReadOnlyMemory<byte> stdin, CancellationToken cancellationToken = default)
    {
        var sandbox = await _idle.Reader.ReadAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            return await sandbox.RunAsync(stdin, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _idle.Writer.TryWrite(sandbox);
        }
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        _idle.Writer.TryComplete();
        foreach (var s in _all)
        {
            await s.DisposeAsync().ConfigureAwait(false);
        }
    }
}
