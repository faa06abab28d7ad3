namespace Virt.Network;

/// <summary>The lifecycle state of a <see cref="VirtualNetwork"/>.</summary>
public enum VirtualNetworkState
{
    /// <summary>Created; ports may attach, no frames flow yet.</summary>
    Created,

    /// <summary>Forwarding frames.</summary>
    Running,

    /// <summary>Stopped; frames are dropped until started again.</summary>
    Stopped,

    /// <summary>Deleted; every port is detached and no new port may attach.</summary>
    Deleted,
}

/// <summary>
/// Creates, finds and deletes <see cref="VirtualNetwork"/>s by name. Networks are isolated from each other:
/// they share no ports, MAC tables or frames.
/// </summary>
public sealed class VirtualNetworkHost
{
    private readonly Lock _sync = new();
    private readonly Dictionary<string, VirtualNetwork> _networks = new(StringComparer.Ordinal);
    private readonly TimeProvider _time;

    /// <summary>Creates an empty host; <paramref name="timeProvider"/> drives MAC-table aging (system clock by default).</summary>
    public VirtualNetworkHost(TimeProvider? timeProvider = null) => _time = timeProvider ?? TimeProvider.System;

    /// <summary>The networks that exist.</summary>
    public IReadOnlyCollection<VirtualNetwork> Networks
    {
        get
        {
            lock (_sync)
            {
                return [.. _networks.Values];
            }
        }
    }

    /// <summary>Creates a network named <paramref name="name"/> in the <see cref="VirtualNetworkState.Created"/> state.</summary>
    /// <exception cref="InvalidOperationException">A network with that name exists.</exception>
    public VirtualNetwork Create(string name, VirtualNetworkOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        lock (_sync)
        {
            if (_networks.ContainsKey(name))
            {
                throw new InvalidOperationException($"A virtual network named '{name}' already exists; delete it first or choose another name.");
            }

            var network = new VirtualNetwork(name, options ?? new VirtualNetworkOptions(), _time, this);
            _networks.Add(name, network);
            return network;
        }
    }

    /// <summary>Finds a network by name.</summary>
    public bool TryGet(string name, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out VirtualNetwork? network)
    {
        lock (_sync)
        {
            return _networks.TryGetValue(name, out network);
        }
    }

    /// <summary>Deletes the network named <paramref name="name"/>, detaching every port.</summary>
    /// <exception cref="InvalidOperationException">No such network exists.</exception>
    public void Delete(string name)
    {
        VirtualNetwork? network;
        lock (_sync)
        {
            if (!_networks.Remove(name, out network))
            {
                throw new InvalidOperationException($"No virtual network named '{name}' exists.");
            }
        }

        network.MarkDeleted();
    }

    internal void Forget(VirtualNetwork network)
    {
        lock (_sync)
        {
            if (_networks.TryGetValue(network.Name, out var existing) && ReferenceEquals(existing, network))
            {
                _networks.Remove(network.Name);
            }
        }
    }
}

/// <summary>Settings of a <see cref="VirtualNetwork"/>.</summary>
public sealed record VirtualNetworkOptions
{
    /// <summary>How long a learned MAC address stays in the table without traffic from it (default 300 s).</summary>
    public TimeSpan MacAgingTime { get; init; } = TimeSpan.FromSeconds(300);

    /// <summary>Maximum number of learned addresses; beyond it, unknown destinations are flooded (default 4096).</summary>
    public int MaxMacTableSize { get; init; } = 4096;
}

/// <summary>
/// An in-process Ethernet segment: a learning L2 switch. Each attached NIC gets a <see cref="VirtualNetworkPort"/>
/// (an <see cref="INetworkBackend"/>). Frames to a learned address go to its port only; broadcast, multicast and
/// unknown destinations are flooded to every other port. Learned addresses age out.
/// </summary>
public sealed class VirtualNetwork
{
    private readonly Lock _sync = new();
    private readonly Dictionary<MacAddress, (VirtualNetworkPort Port, long Seen)> _table = [];
    private readonly TimeProvider _time;
    private readonly VirtualNetworkHost? _host;
    private readonly long _agingTicks;
    private readonly int _maxTable;
    private VirtualNetworkPort[] _ports = [];
    private VirtualNetworkState _state;
    private long _forwarded;
    private long _flooded;
    private long _dropped;

    /// <summary>Creates a standalone network (not registered with a host) in the Created state.</summary>
    public VirtualNetwork(string name, VirtualNetworkOptions? options = null, TimeProvider? timeProvider = null)
        : this(name, options ?? new VirtualNetworkOptions(), timeProvider ?? TimeProvider.System, null)
    {
    }

    internal VirtualNetwork(string name, VirtualNetworkOptions options, TimeProvider time, VirtualNetworkHost? host)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(options.MacAgingTime, TimeSpan.Zero, nameof(options));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(options.MaxMacTableSize, nameof(options));
        Name = name;
        _time = time;
        _host = host;
        _agingTicks = (long)(options.MacAgingTime.TotalSeconds * time.TimestampFrequency);
        _maxTable = options.MaxMacTableSize;
    }

    /// <summary>The network's name.</summary>
    public string Name { get; }

    /// <summary>The lifecycle state.</summary>
    public VirtualNetworkState State
    {
        get
        {
            lock (_sync)
            {
                return _state;
            }
        }
    }

    /// <summary>The attached ports.</summary>
    public IReadOnlyList<VirtualNetworkPort> Ports => Volatile.Read(ref _ports);

    /// <summary>Frames sent to exactly one learned port.</summary>
    public long FramesForwarded => Interlocked.Read(ref _forwarded);

    /// <summary>Frames flooded (broadcast, multicast, unknown destination).</summary>
    public long FramesFlooded => Interlocked.Read(ref _flooded);

    /// <summary>Frames dropped (network not running, runt frames).</summary>
    public long FramesDropped => Interlocked.Read(ref _dropped);

    /// <summary>Starts forwarding frames.</summary>
    /// <exception cref="InvalidOperationException">The network was deleted.</exception>
    public void Start() => Transition(VirtualNetworkState.Running);

    /// <summary>Stops forwarding frames (they are dropped) and forgets learned addresses.</summary>
    /// <exception cref="InvalidOperationException">The network was deleted.</exception>
    public void Stop() => Transition(VirtualNetworkState.Stopped);

    /// <summary>Deletes the network: detaches every port and removes it from its host.</summary>
    public void Delete()
    {
        _host?.Forget(this);
        MarkDeleted();
    }

    /// <summary>Attaches a new port (plug a NIC's backend into the switch).</summary>
    /// <param name="name">A label for diagnostics, e.g. the VM's name.</param>
    /// <exception cref="InvalidOperationException">The network was deleted.</exception>
    public VirtualNetworkPort Attach(string? name = null)
    {
        lock (_sync)
        {
            if (_state == VirtualNetworkState.Deleted)
            {
                throw new InvalidOperationException($"The virtual network '{Name}' was deleted; create a new one to attach NICs.");
            }

            var port = new VirtualNetworkPort(this, name ?? $"{Name}-port{_ports.Length}");
            _ports = [.. _ports, port];
            return port;
        }
    }

    /// <summary>Detaches <paramref name="port"/>; frames to and from it stop. Detaching twice does nothing.</summary>
    public void Detach(VirtualNetworkPort port)
    {
        ArgumentNullException.ThrowIfNull(port);
        lock (_sync)
        {
            if (Array.IndexOf(_ports, port) < 0)
            {
                return;
            }

            _ports = [.. _ports.Where(p => !ReferenceEquals(p, port))];
            foreach (var mac in _table.Where(e => ReferenceEquals(e.Value.Port, port)).Select(e => e.Key).ToList())
            {
                _table.Remove(mac);
            }
        }
    }

    internal void MarkDeleted()
    {
        lock (_sync)
        {
            _state = VirtualNetworkState.Deleted;
            _ports = [];
            _table.Clear();
        }
    }

    private void Transition(VirtualNetworkState to)
    {
        lock (_sync)
        {
            if (_state == VirtualNetworkState.Deleted)
            {
                throw new InvalidOperationException($"The virtual network '{Name}' was deleted; it cannot be {(to == VirtualNetworkState.Running ? "started" : "stopped")}.");
            }

            _state = to;
            if (to == VirtualNetworkState.Stopped)
            {
                _table.Clear();
            }
        }
    }

    /// <summary>Switches one frame that arrived on <paramref name="from"/>.</summary>
    internal void Forward(VirtualNetworkPort from, ReadOnlyMemory<byte> frame)
    {
        var span = frame.Span;
        if (span.Length < 14)
        {
            Interlocked.Increment(ref _dropped);
            NetworkTelemetry.Dropped(Name, "runt");
            return;
        }

        var destination = MacAddress.Read(span[..6]);
        var source = MacAddress.Read(span[6..12]);
        VirtualNetworkPort? target = null;
        VirtualNetworkPort[] ports;
        lock (_sync)
        {
            if (_state != VirtualNetworkState.Running || !from.IsAttached)
            {
                Interlocked.Increment(ref _dropped);
                NetworkTelemetry.Dropped(Name, "stopped");
                return;
            }

            long now = _time.GetTimestamp();
            if (!source.IsMulticast && (_table.Count < _maxTable || _table.ContainsKey(source)))
            {
                _table[source] = (from, now);
            }

            if (!destination.IsMulticast && _table.TryGetValue(destination, out var entry))
            {
                if (now - entry.Seen <= _agingTicks)
                {
                    target = entry.Port;
                }
                else
                {
                    _table.Remove(destination);
                }
            }

            ports = _ports;
        }

        if (target is not null)
        {
            if (!ReferenceEquals(target, from))
            {
                Interlocked.Increment(ref _forwarded);
                target.Deliver(frame);
            }

            return;
        }

        Interlocked.Increment(ref _flooded);
        foreach (var port in ports)
        {
            if (!ReferenceEquals(port, from))
            {
                port.Deliver(frame);
            }
        }
    }

    internal bool Contains(VirtualNetworkPort port) => Array.IndexOf(Volatile.Read(ref _ports), port) >= 0;
}

/// <summary>
/// One port of a <see cref="VirtualNetwork"/>: the backend a NIC uses to join the network. Disposing it detaches
/// the NIC.
/// </summary>
public sealed class VirtualNetworkPort : INetworkBackend
{
    private Func<ReadOnlyMemory<byte>, bool>? _receiver;
    private long _delivered;
    private long _dropped;

    internal VirtualNetworkPort(VirtualNetwork network, string name)
    {
        Network = network;
        Name = name;
    }

    /// <summary>The network the port belongs to.</summary>
    public VirtualNetwork Network { get; }

    /// <summary>The port's label.</summary>
    public string Name { get; }

    /// <summary>Whether the port is still attached to its network.</summary>
    public bool IsAttached => Network.Contains(this);

    /// <summary>Frames handed to the NIC behind this port.</summary>
    public long FramesDelivered => Interlocked.Read(ref _delivered);

    /// <summary>Frames the NIC behind this port had no room for.</summary>
    public long FramesDropped => Interlocked.Read(ref _dropped);

    /// <inheritdoc />
    public ValueTask SendAsync(ReadOnlyMemory<byte> frame, CancellationToken cancellationToken = default)
    {
        Network.Forward(this, frame);
        return ValueTask.CompletedTask;
    }

    /// <inheritdoc />
    public void Attach(Func<ReadOnlyMemory<byte>, bool> receiver)
    {
        ArgumentNullException.ThrowIfNull(receiver);
        Volatile.Write(ref _receiver, receiver);
    }

    /// <inheritdoc />
    public ValueTask DisposeAsync()
    {
        Network.Detach(this);
        return ValueTask.CompletedTask;
    }

    internal void Deliver(ReadOnlyMemory<byte> frame)
    {
        if (Volatile.Read(ref _receiver) is { } receiver && receiver(frame))
        {
            Interlocked.Increment(ref _delivered);
        }
        else
        {
            Interlocked.Increment(ref _dropped);
            NetworkTelemetry.Dropped(Network.Name, "receiver_refused");
        }
    }
}
