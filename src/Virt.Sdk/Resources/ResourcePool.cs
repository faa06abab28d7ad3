using System.Globalization;
using Virt.Cpu;
using Virt.Devices.Virtio;
using Virt.Resources;

namespace Virt;

/// <summary>
/// The share of a host that a set of VMs may use: CPUs, memory and I/O bandwidth. A VM built with
/// <see cref="VirtualMachineBuilder.WithResourcePool"/> is admitted against the pool's capacity when it is built (or
/// refused with a <see cref="ResourceExhaustedException"/> that names what is short), its vCPUs share the pool's CPUs by
/// its <see cref="ResourceRequest.CpuShares"/> and within its <see cref="ResourceRequest.CpuLimit"/>, and it leaves the
/// pool when disposed. See docs/resources.md.
/// </summary>
/// <remarks>
/// Thread-safe. One pool per host is the usual set-up (<c>AddVirtualization</c> registers one); several pools divide a
/// host into fixed parts. Dispose the pool after its VMs.
/// </remarks>
public sealed class ResourcePool : IDisposable
{
    private readonly Lock _sync = new();
    private readonly List<PoolMember> _members = [];
    private readonly CpuScheduler _scheduler;
    private long _refused;
    private long _admitted;

    /// <summary>Creates a pool with the given capacity (by default: this host's CPUs and memory).</summary>
    /// <exception cref="ArgumentException">A capacity or ratio is not positive.</exception>
    public ResourcePool(ResourcePoolOptions? options = null)
    {
        Options = options ?? new ResourcePoolOptions();
        Options.Validate();
        _scheduler = new CpuScheduler((int)Math.Ceiling(Options.Cpus), Options.TimeSlice);
        ResourceMetrics.Track(this);
    }

    /// <summary>The pool's capacity and policy.</summary>
    public ResourcePoolOptions Options { get; }

    /// <summary>VMs refused so far.</summary>
    public long RefusedCount => Interlocked.Read(ref _refused);

    /// <summary>VMs admitted so far (including those that have left).</summary>
    public long AdmittedCount => Interlocked.Read(ref _admitted);

    /// <summary>Guest memory charged to the admitted VMs (their RAM less what their balloons hold), in bytes.</summary>
    public ulong MemoryCharged
    {
        get
        {
            lock (_sync)
            {
                return ChargedMemoryLocked();
            }
        }
    }

    /// <summary>What each admitted VM reserved and has used, in admission order.</summary>
    public IReadOnlyList<ResourceUsage> GetUsage()
    {
        lock (_sync)
        {
            return [.. _members.Select(m => m.Usage())];
        }
    }

    /// <summary>What the VM named <paramref name="name"/> reserved and has used, or null if no such VM is admitted.</summary>
    public ResourceUsage? GetUsage(string name)
    {
        lock (_sync)
        {
            return _members.Find(m => m.Name == name)?.Usage();
        }
    }

    /// <summary>
    /// Asks the balloons of admitted VMs to take back <paramref name="bytes"/> of guest memory, VMs that used the least
    /// CPU recently first and each at most down to its <see cref="ResourceRequest.MinimumMemoryBytes"/>, and waits until
    /// the guests have given it or <paramref name="cancellationToken"/> fires. Memory given back lowers what those VMs
    /// are charged, so a VM that did not fit may then be admitted. Returns the bytes reclaimed.
    /// </summary>
    /// <exception cref="OperationCanceledException">Cancelled before the guests gave the memory.</exception>
    public async Task<ulong> ReclaimMemoryAsync(ulong bytes, CancellationToken cancellationToken = default)
    {
        List<(PoolMember Member, ulong Bytes)> plan = [];
        lock (_sync)
        {
            ulong left = bytes;
            foreach (var m in _members.Where(m => m.Balloon is not null).OrderBy(m => m.Cpu.CpuNanoseconds))
            {
                if (left == 0)
                {
                    break;
                }

                ulong room = m.ReclaimableBytes;
                ulong take = Math.Min(room, left);
                if (take > 0)
                {
                    plan.Add((m, take));
                    left -= take;
                }
            }
        }

        ulong reclaimed = 0;
        foreach (var (member, take) in plan)
        {
            var balloon = member.Balloon!;
            ulong before = balloon.ActualBytes;
            await balloon.InflateToAsync(balloon.TargetBytes + take, cancellationToken).ConfigureAwait(false);
            reclaimed += balloon.ActualBytes - Math.Min(before, balloon.ActualBytes);
        }

        return reclaimed;
    }

    /// <summary>Stops the pool's CPU scheduler. Dispose the pool's VMs first.</summary>
    public void Dispose()
    {
        ResourceMetrics.Untrack(this);
        _scheduler.Dispose();
    }

    internal PoolMember Admit(string name, int vcpus, ulong memoryBytes, ResourceRequest request)
    {
        request.Validate();
        lock (_sync)
        {
            if (_members.Exists(m => m.Name == name))
            {
                Refuse();
                throw new ArgumentException($"The resource pool already has a VM named '{name}'. Give each VM in a pool its own name with WithName(name).");
            }

            ulong memoryCapacity = (ulong)(Options.MemoryBytes * Options.MemoryOvercommit);
            ulong charged = ChargedMemoryLocked();
            if (charged + memoryBytes > memoryCapacity)
            {
                Refuse();
                throw new ResourceExhaustedException(
                    ResourceKind.Memory, name, memoryBytes, memoryCapacity - Math.Min(charged, memoryCapacity),
                    $"The VM '{name}' needs {Mib(memoryBytes)} of memory, but the pool has {Mib(memoryCapacity - Math.Min(charged, memoryCapacity))} free " +
                    $"of {Mib(memoryCapacity)} ({_members.Count} VMs admitted): {Mib(charged + memoryBytes - memoryCapacity)} short. " +
                    "Give the VM less memory, dispose a VM, reclaim memory from idle VMs with ReclaimMemoryAsync, or raise MemoryBytes or MemoryOvercommit.");
            }

            double vcpuCapacity = Options.Cpus * Options.VcpuOvercommit;
            int vcpusAdmitted = _members.Sum(m => m.Vcpus);
            if (vcpusAdmitted + vcpus > vcpuCapacity + 1e-9)
            {
                Refuse();
                throw new ResourceExhaustedException(
                    ResourceKind.Vcpus, name, vcpus, Math.Max(0, vcpuCapacity - vcpusAdmitted),
                    $"The VM '{name}' needs {vcpus} vCPU(s), but the pool admits {F(vcpuCapacity)} ({F(Options.Cpus)} CPUs x {F(Options.VcpuOvercommit)} overcommit) " +
                    $"and {vcpusAdmitted} are admitted: {F(vcpusAdmitted + vcpus - vcpuCapacity)} short. Use fewer vCPUs, dispose a VM, or raise VcpuOvercommit.");
            }

            Check(ResourceKind.Cpu, name, request.CpuReservation, Options.Cpus, _members.Sum(m => m.Request.CpuReservation), "CPUs", "CpuReservation");
            Check(ResourceKind.DiskBandwidth, name, request.DiskBytesPerSecond, Options.DiskBytesPerSecond, _members.Sum(m => (double)m.Request.DiskBytesPerSecond), "bytes/s of disk bandwidth", "DiskBytesPerSecond");
            Check(ResourceKind.NetworkBandwidth, name, request.NetworkBytesPerSecond, Options.NetworkBytesPerSecond, _members.Sum(m => (double)m.Request.NetworkBytesPerSecond), "bytes/s of network bandwidth", "NetworkBytesPerSecond");

            var member = new PoolMember(this, _scheduler, name, vcpus, memoryBytes, request);
            _members.Add(member);
            Interlocked.Increment(ref _admitted);
            return member;
        }
    }

    internal void Remove(PoolMember member)
    {
        lock (_sync)
        {
            _members.Remove(member);
        }

        _scheduler.RemoveAccount(member.Cpu);
    }

    private void Check(ResourceKind kind, string name, double requested, double? capacity, double reserved, string unit, string property)
    {
        if (requested <= 0 || capacity is not double cap)
        {
            return;
        }

        if (reserved + requested > cap + 1e-9)
        {
            Refuse();
            double free = Math.Max(0, cap - reserved);
            throw new ResourceExhaustedException(kind, name, requested, free,
                $"The VM '{name}' reserves {F(requested)} {unit}, but the pool has {F(free)} of {F(cap)} unreserved: {F(reserved + requested - cap)} short. " +
                $"Lower the VM's {property} reservation, dispose a VM, or raise the pool's {property}.");
        }
    }

    private void Refuse()
    {
        Interlocked.Increment(ref _refused);
        ResourceMetrics.Refused.Add(1);
    }

    private ulong ChargedMemoryLocked()
    {
        ulong sum = 0;
        foreach (var m in _members)
        {
            sum += m.ChargedMemory;
        }

        return sum;
    }

    private static string Mib(ulong bytes) => string.Create(CultureInfo.InvariantCulture, $"{bytes / (1024.0 * 1024):0.#} MiB");

    private static string F(double value) => value.ToString("0.##", CultureInfo.InvariantCulture);
}

/// <summary>A VM's place in a <see cref="ResourcePool"/>: its reservations, its CPU account and its vCPUs' places in the scheduler.</summary>
internal sealed class PoolMember : IDisposable
{
    private readonly ResourcePool _pool;
    private readonly CpuScheduler _scheduler;
    private VcpuRunner[] _runners = [];
    private int _disposed;

    public PoolMember(ResourcePool pool, CpuScheduler scheduler, string name, int vcpus, ulong memoryBytes, ResourceRequest request)
    {
        _pool = pool;
        _scheduler = scheduler;
        Name = name;
        Vcpus = vcpus;
        MemoryBytes = memoryBytes;
        Request = request;
        Cpu = scheduler.CreateAccount(name, request.CpuShares, request.CpuLimit);
        DiskBytes = request.DiskBytesPerSecondLimit is long db ? new TokenBucket(db) : null;
        DiskOperations = request.DiskOperationsPerSecondLimit is long dops ? new TokenBucket(dops) : null;
        NetworkTransmit = request.NetworkBytesPerSecondLimit is long nb ? new TokenBucket(nb) : null;
        NetworkReceive = request.NetworkBytesPerSecondLimit is long nr ? new TokenBucket(nr) : null;
    }

    /// <summary>The VM's disk byte budget, shared by all of its disks; null without a limit.</summary>
    public TokenBucket? DiskBytes { get; }

    /// <summary>The VM's disk request budget, shared by all of its disks; null without a limit.</summary>
    public TokenBucket? DiskOperations { get; }

    /// <summary>The VM's transmit byte budget, shared by all of its NICs; null without a limit.</summary>
    public TokenBucket? NetworkTransmit { get; }

    /// <summary>The VM's receive byte budget, shared by all of its NICs; null without a limit.</summary>
    public TokenBucket? NetworkReceive { get; }

    public string Name { get; }

    public int Vcpus { get; }

    public ulong MemoryBytes { get; }

    public ResourceRequest Request { get; }

    public CpuAccount Cpu { get; }

    public MemoryBalloon? Balloon { get; set; }

    public Func<ulong?>? ResidentBytes { get; set; }

    public ulong ChargedMemory => MemoryBytes - Math.Min(MemoryBytes, Balloon?.ActualBytes ?? 0);

    public ulong ReclaimableBytes
    {
        get
        {
            if (Balloon is null)
            {
                return 0;
            }

            ulong floor = Math.Max(Request.MinimumMemoryBytes, MemoryBytes / 8);
            ulong current = MemoryBytes - Math.Min(MemoryBytes, Balloon.TargetBytes);
            return current > floor ? current - floor : 0;
        }
    }

    public void Attach(IVirtualCpu[] vcpus) => _runners = [.. vcpus.Select(v => CpuScheduler.CreateRunner(Cpu, v))];

    public bool Enter(int index, Func<bool> abandon) => _scheduler.Enter(_runners[index], abandon);

    public void Leave(int index) => _scheduler.Leave(_runners[index]);

    public void WakeAll()
    {
        foreach (var r in _runners)
        {
            r.Wake();
        }
    }

    public ResourceUsage Usage() => new()
    {
        Name = Name,
        Vcpus = Vcpus,
        MemoryBytes = MemoryBytes,
        MemoryChargedBytes = ChargedMemory,
        BalloonBytes = Balloon?.ActualBytes ?? 0,
        ResidentBytes = ResidentBytes?.Invoke(),
        CpuShares = Request.CpuShares,
        CpuLimit = Request.CpuLimit,
        CpuReservation = Request.CpuReservation,
        CpuTime = TimeSpan.FromTicks(Cpu.CpuNanoseconds / 100),
        ThrottledTime = System.Diagnostics.Stopwatch.GetElapsedTime(0, Cpu.ThrottledTicks),
        Preemptions = Cpu.Preemptions,
        SlotGrants = Cpu.Grants,
        MaxGrantsWaited = Cpu.MaxGrantsWaited,
        DiskBytes = DiskBytes?.TotalConsumed,
        DiskOperations = DiskOperations?.TotalConsumed,
        DiskThrottled = (DiskBytes?.ThrottledCount ?? 0) + (DiskOperations?.ThrottledCount ?? 0),
        NetworkBytes = NetworkTransmit is null ? null : NetworkTransmit.TotalConsumed + NetworkReceive!.TotalConsumed,
        NetworkThrottled = (NetworkTransmit?.ThrottledCount ?? 0) + (NetworkReceive?.ThrottledCount ?? 0),
    };

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            _pool.Remove(this);
            foreach (var r in _runners)
            {
                r.Clock?.Dispose();
                r.Signal.Dispose();
            }
        }
    }
}
