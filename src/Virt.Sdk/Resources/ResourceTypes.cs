using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Globalization;

namespace Virt;

/// <summary>The capacity and policy of a <see cref="ResourcePool"/>.</summary>
public sealed class ResourcePoolOptions
{
    /// <summary>Host CPUs the pool's vCPUs may keep busy at once (rounded up to whole CPUs for the scheduler). Default: the host's logical CPUs.</summary>
    public double Cpus { get; init; } = Environment.ProcessorCount;

    /// <summary>Guest memory the pool may hold, in bytes. Default: the memory the .NET runtime sees as available to this process.</summary>
    public ulong MemoryBytes { get; init; } = (ulong)Math.Max(1, GC.GetGCMemoryInfo().TotalAvailableMemoryBytes);

    /// <summary>
    /// How many vCPUs may be admitted per CPU of <see cref="Cpus"/> (an explicit overcommit policy). Default: 4.
    /// </summary>
    public double VcpuOvercommit { get; init; } = 4;

    /// <summary>
    /// How much guest memory may be admitted per byte of <see cref="MemoryBytes"/>. Default: 1 (no overcommit); above 1,
    /// VMs are admitted on the bet that not all of them touch all of their RAM, and balloons reclaim it when needed.
    /// </summary>
    public double MemoryOvercommit { get; init; } = 1;

    /// <summary>Disk bandwidth VMs may reserve, in bytes a second; null: not accounted.</summary>
    public long? DiskBytesPerSecond { get; init; }

    /// <summary>Network bandwidth VMs may reserve, in bytes a second; null: not accounted.</summary>
    public long? NetworkBytesPerSecond { get; init; }

    /// <summary>How long a vCPU runs before a waiting vCPU with less CPU per share takes its CPU. Default: 10 ms.</summary>
    public TimeSpan TimeSlice { get; init; } = TimeSpan.FromMilliseconds(10);

    internal void Validate()
    {
        if (!(Cpus > 0) || double.IsInfinity(Cpus) || Cpus > 4096)
        {
            throw new ArgumentException($"Cpus must be between 0 and 4096 (was {Cpus.ToString(CultureInfo.InvariantCulture)}), e.g. Environment.ProcessorCount.");
        }

        if (MemoryBytes == 0)
        {
            throw new ArgumentException("MemoryBytes must be positive: the guest memory the pool may hold, in bytes.");
        }

        if (!(VcpuOvercommit > 0) || !(MemoryOvercommit > 0) || double.IsInfinity(VcpuOvercommit) || double.IsInfinity(MemoryOvercommit))
        {
            throw new ArgumentException("VcpuOvercommit and MemoryOvercommit must be positive finite ratios (1 = no overcommit).");
        }

        if (DiskBytesPerSecond is <= 0 || NetworkBytesPerSecond is <= 0)
        {
            throw new ArgumentException("DiskBytesPerSecond and NetworkBytesPerSecond must be positive, or null for no accounting.");
        }

        if (TimeSlice < TimeSpan.FromMilliseconds(1) || TimeSlice > TimeSpan.FromSeconds(1))
        {
            throw new ArgumentException($"TimeSlice must be between 1 ms and 1 s (was {TimeSlice.TotalMilliseconds.ToString(CultureInfo.InvariantCulture)} ms).");
        }
    }
}

/// <summary>What a VM asks of its <see cref="ResourcePool"/>: reservations checked at admission, shares and limits enforced while it runs.</summary>
public sealed class ResourceRequest
{
    /// <summary>The VM's weight when vCPUs wait for the pool's CPUs: a VM with twice the shares gets twice the CPU under contention. 1 to 10000; default 1024.</summary>
    public int CpuShares { get; init; } = 1024;

    /// <summary>The most CPU the VM may use, in cores (e.g. 1.5), whatever the pool has free; null for no cap.</summary>
    public double? CpuLimit { get; init; }

    /// <summary>CPU the VM reserves, in cores: the sum over a pool's VMs may not exceed its <see cref="ResourcePoolOptions.Cpus"/>. Default 0.</summary>
    public double CpuReservation { get; init; }

    /// <summary>The least guest memory a reclaim leaves the VM, in bytes (and never less than an eighth of its RAM). Default 0.</summary>
    public ulong MinimumMemoryBytes { get; init; }

    /// <summary>Disk bandwidth the VM reserves, in bytes a second (checked against <see cref="ResourcePoolOptions.DiskBytesPerSecond"/>). Default 0.</summary>
    public long DiskBytesPerSecond { get; init; }

    /// <summary>Network bandwidth the VM reserves, in bytes a second (checked against <see cref="ResourcePoolOptions.NetworkBytesPerSecond"/>). Default 0.</summary>
    public long NetworkBytesPerSecond { get; init; }

    /// <summary>
    /// The most disk bandwidth the VM may use, in bytes a second over all of its virtio-blk disks together; null for no
    /// cap. Requests beyond it wait (the guest sees a slower disk). Must not be below <see cref="DiskBytesPerSecond"/>.
    /// </summary>
    public long? DiskBytesPerSecondLimit { get; init; }

    /// <summary>The most disk requests the VM may make a second over all of its disks together (an IOPS cap); null for no cap.</summary>
    public long? DiskOperationsPerSecondLimit { get; init; }

    /// <summary>
    /// The most network bandwidth the VM may use, in bytes a second over all of its virtio-net NICs, in each direction;
    /// null for no cap. Frames it sends beyond it wait; frames arriving beyond it are dropped, as on a congested link.
    /// Must not be below <see cref="NetworkBytesPerSecond"/>.
    /// </summary>
    public long? NetworkBytesPerSecondLimit { get; init; }

    internal void Validate()
    {
        if (CpuShares is < 1 or > 10000)
        {
            throw new ArgumentException($"CpuShares must be between 1 and 10000 (was {CpuShares}); the default is 1024.");
        }

        if (CpuLimit is double l && (!(l > 0) || double.IsInfinity(l)))
        {
            throw new ArgumentException($"CpuLimit must be a positive number of cores, e.g. 1.5 (was {l.ToString(CultureInfo.InvariantCulture)}), or null for no cap.");
        }

        if (!(CpuReservation >= 0) || double.IsInfinity(CpuReservation))
        {
            throw new ArgumentException("CpuReservation must be a non-negative number of cores.");
        }

        if (DiskBytesPerSecond < 0 || NetworkBytesPerSecond < 0)
        {
            throw new ArgumentException("Bandwidth reservations must not be negative.");
        }

        if (DiskBytesPerSecondLimit is <= 0 || DiskOperationsPerSecondLimit is <= 0 || NetworkBytesPerSecondLimit is <= 0)
        {
            throw new ArgumentException("DiskBytesPerSecondLimit, DiskOperationsPerSecondLimit and NetworkBytesPerSecondLimit must be positive, or null for no cap.");
        }

        if (DiskBytesPerSecondLimit < DiskBytesPerSecond || NetworkBytesPerSecondLimit < NetworkBytesPerSecond)
        {
            throw new ArgumentException(string.Create(CultureInfo.InvariantCulture,
                $"A bandwidth limit is below the VM's reservation (disk {DiskBytesPerSecondLimit} < {DiskBytesPerSecond} or network {NetworkBytesPerSecondLimit} < {NetworkBytesPerSecond} bytes/s). Raise the limit or lower the reservation."));
        }
    }
}

/// <summary>A VM's reservations in a <see cref="ResourcePool"/> and what it has used.</summary>
public sealed record ResourceUsage
{
    /// <summary>The VM's name.</summary>
    public required string Name { get; init; }

    /// <summary>Its vCPUs.</summary>
    public int Vcpus { get; init; }

    /// <summary>Its guest RAM, in bytes.</summary>
    public ulong MemoryBytes { get; init; }

    /// <summary>The memory the pool charges it: RAM less what its balloon holds.</summary>
    public ulong MemoryChargedBytes { get; init; }

    /// <summary>What its balloon holds, in bytes.</summary>
    public ulong BalloonBytes { get; init; }

    /// <summary>How much of its guest memory the host holds in RAM now, where the host can tell (Linux).</summary>
    public ulong? ResidentBytes { get; init; }

    /// <summary>Its CPU shares.</summary>
    public int CpuShares { get; init; }

    /// <summary>Its CPU cap in cores, if any.</summary>
    public double? CpuLimit { get; init; }

    /// <summary>The CPU it reserved, in cores.</summary>
    public double CpuReservation { get; init; }

    /// <summary>CPU time its vCPU threads used while it was in the pool, as the host measured it.</summary>
    public TimeSpan CpuTime { get; init; }

    /// <summary>Time its vCPUs waited because the VM was over its <see cref="CpuLimit"/>.</summary>
    public TimeSpan ThrottledTime { get; init; }

    /// <summary>Times a vCPU was asked to give its CPU up (its slice ended with others waiting, or it hit its cap).</summary>
    public long Preemptions { get; init; }

    /// <summary>Times a vCPU was given one of the pool's CPUs.</summary>
    public long SlotGrants { get; init; }

    /// <summary>The most grants to other vCPUs that one of its vCPUs waited through before getting a CPU.</summary>
    public long MaxGrantsWaited { get; init; }

    /// <summary>Bytes its disks read and wrote through its <see cref="ResourceRequest.DiskBytesPerSecondLimit"/>; null without that limit.</summary>
    public long? DiskBytes { get; init; }

    /// <summary>Disk requests counted against its <see cref="ResourceRequest.DiskOperationsPerSecondLimit"/>; null without that limit.</summary>
    public long? DiskOperations { get; init; }

    /// <summary>Times a disk request of the VM waited for its disk limits (bytes or requests).</summary>
    public long DiskThrottled { get; init; }

    /// <summary>Bytes its NICs sent and received within its <see cref="ResourceRequest.NetworkBytesPerSecondLimit"/>; null without that limit.</summary>
    public long? NetworkBytes { get; init; }

    /// <summary>Times its network limit held a frame back: a sent frame waited, or an arriving frame was dropped.</summary>
    public long NetworkThrottled { get; init; }
}

/// <summary>A resource a <see cref="ResourcePool"/> accounts.</summary>
public enum ResourceKind
{
    /// <summary>Guest memory.</summary>
    Memory,

    /// <summary>vCPUs admitted (against CPUs times the overcommit ratio).</summary>
    Vcpus,

    /// <summary>Reserved CPU.</summary>
    Cpu,

    /// <summary>Reserved disk bandwidth.</summary>
    DiskBandwidth,

    /// <summary>Reserved network bandwidth.</summary>
    NetworkBandwidth,
}

/// <summary>A <see cref="ResourcePool"/> refused a VM: <see cref="Resource"/> is short; the message says by how much and what to do.</summary>
public sealed class ResourceExhaustedException : InvalidOperationException
{
    /// <summary>Creates the exception.</summary>
    public ResourceExhaustedException(ResourceKind resource, string machineName, double requested, double available, string message)
        : base(message)
    {
        Resource = resource;
        MachineName = machineName;
        Requested = requested;
        Available = available;
    }

    /// <summary>The resource that is short.</summary>
    public ResourceKind Resource { get; }

    /// <summary>The VM that was refused.</summary>
    public string MachineName { get; }

    /// <summary>How much of the resource the VM asked for (bytes, vCPUs, cores or bytes a second).</summary>
    public double Requested { get; }

    /// <summary>How much the pool had left.</summary>
    public double Available { get; }
}

internal static class ResourceMetrics
{
    private static readonly Meter Meter = new("Virt.Sdk.Resources");

    private static readonly Lock Sync = new();
    private static readonly List<WeakReference<ResourcePool>> Pools = [];
    private static readonly TimeSpan UsageReuse = TimeSpan.FromMilliseconds(50);
    private static List<ResourceUsage>? _usage;
    private static long _usageTaken;

    public static readonly Counter<long> Refused = Meter.CreateCounter<long>("virt.pool.admissions.refused", description: "VMs a resource pool refused");

    static ResourceMetrics()
    {
        Meter.CreateObservableCounter("virt.pool.cpu.time", () => Observe(u => u.CpuTime.TotalSeconds), "s", "CPU time the vCPU threads of a pooled VM used");
        Meter.CreateObservableCounter("virt.pool.cpu.throttled", () => Observe(u => u.ThrottledTime.TotalSeconds), "s", "Time the vCPUs of a pooled VM waited because the VM was over its CPU limit");
        Meter.CreateObservableCounter("virt.pool.disk.bytes", () => Observe(u => u.DiskBytes), "By", "Bytes a pooled VM's disks moved within its disk limit");
        Meter.CreateObservableCounter("virt.pool.disk.throttled", () => Observe(u => (long?)u.DiskThrottled), "{request}", "Disk requests of a pooled VM that waited for its disk limits");
        Meter.CreateObservableCounter("virt.pool.network.bytes", () => Observe(u => u.NetworkBytes), "By", "Bytes a pooled VM's NICs moved within its network limit");
        Meter.CreateObservableCounter("virt.pool.network.throttled", () => Observe(u => (long?)u.NetworkThrottled), "{frame}", "Frames of a pooled VM its network limit delayed or dropped");
        Meter.CreateObservableGauge("virt.pool.memory.charged", () => Observe(u => (long?)u.MemoryChargedBytes), "By", "Guest memory a pool charges a VM (RAM less its balloon)");
    }

    /// <summary>Lists <paramref name="pool"/>'s VMs in the pool metrics until it is disposed.</summary>
    public static void Track(ResourcePool pool)
    {
        lock (Sync)
        {
            Pools.RemoveAll(w => !w.TryGetTarget(out _));
            Pools.Add(new WeakReference<ResourcePool>(pool));
            _usage = null;
        }
    }

    public static void Untrack(ResourcePool pool)
    {
        lock (Sync)
        {
            Pools.RemoveAll(w => !w.TryGetTarget(out var p) || ReferenceEquals(p, pool));
            _usage = null;
        }
    }

    private static List<Measurement<T>> Observe<T>(Func<ResourceUsage, T?> value)
        where T : struct
    {
        List<Measurement<T>> measurements = [];
        foreach (var usage in CurrentUsage())
        {
            if (value(usage) is T v)
            {
                measurements.Add(new Measurement<T>(v, new KeyValuePair<string, object?>("virt.vm.name", usage.Name)));
            }
        }

        return measurements;
    }

    /// <summary>
    /// The usage of every tracked pool's VMs. One collection asks all seven instruments in a row, so a list taken less
    /// than <see cref="UsageReuse"/> ago is reused rather than asking every pool (and every VM's threads) seven times.
    /// </summary>
    private static List<ResourceUsage> CurrentUsage()
    {
        List<ResourcePool> pools = [];
        var now = Stopwatch.GetTimestamp();
        lock (Sync)
        {
            if (_usage is not null && Stopwatch.GetElapsedTime(_usageTaken, now) < UsageReuse)
            {
                return _usage;
            }

            foreach (var w in Pools)
            {
                if (w.TryGetTarget(out var p))
                {
                    pools.Add(p);
                }
            }
        }

        // The pools are asked outside Sync: a pool takes its own lock and must never wait for the metrics' one.
        List<ResourceUsage> usage = [];
        foreach (var pool in pools)
        {
            usage.AddRange(pool.GetUsage());
        }

        lock (Sync)
        {
            _usage = usage;
            _usageTaken = now;
        }

        return usage;
    }

    private static List<Measurement<double>> Observe(Func<ResourceUsage, double> value) => Observe<double>(u => value(u));
}
