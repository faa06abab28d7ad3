using System.Collections.Concurrent;
using Microsoft.Extensions.Options;
using Orleans.Runtime;

namespace Virt.Orleans;

/// <summary>
/// The silo's own account: which VMs are active here and what they use, whether the silo is draining, and its
/// budgets and backends; <see cref="Report"/> turns it into the <see cref="SiloCapacity"/> the silo publishes.
/// </summary>
internal sealed class LocalVirtualMachines : IDisposable
{
    private static readonly Lazy<(bool Kvm, bool KvmRunsKernels)> s_backends = new(ProbeBackends);
    private readonly ConcurrentDictionary<string, VirtualMachineDemand> _vms = new(StringComparer.Ordinal);
    private readonly VirtualMachineGrainOptions _options;
    private readonly ILocalSiloDetails _silo;
    private readonly SemaphoreSlim _changed = new(0);
    private volatile bool _draining;

    private readonly IServiceProvider _services;

    public LocalVirtualMachines(IOptions<VirtualMachineGrainOptions> options, ILocalSiloDetails silo, IServiceProvider services)
    {
        _options = options.Value;
        _silo = silo;
        _services = services;
    }

    /// <summary>Where the silo's migration listener accepts connections, once it listens.</summary>
    public string? MigrationEndpoint { get; set; }

    public bool Draining
    {
        get => _draining;
        set
        {
            _draining = value;
            Changed();
        }
    }

    public IReadOnlyCollection<string> Names => [.. _vms.Keys];

    public bool Contains(string name) => _vms.ContainsKey(name);

    public VirtualMachineDemand? Demand(string name) => _vms.TryGetValue(name, out var demand) ? demand : null;

    public void Add(string name, VirtualMachineDemand demand)
    {
        _vms[name] = demand;
        Changed();
    }

    public void Remove(string name)
    {
        if (_vms.TryRemove(name, out _))
        {
            Changed();
        }
    }

    /// <summary>Signals the publisher that the report changed.</summary>
    public void Changed()
    {
        if (_changed.CurrentCount == 0)
        {
            _changed.Release();
        }
    }

    /// <summary>Waits for a change or <paramref name="interval"/>, whichever comes first.</summary>
    public Task WaitForChangeAsync(TimeSpan interval, CancellationToken cancellationToken) => _changed.WaitAsync(interval, cancellationToken);

    public long MemoryBudgetBytes => _options.MemoryBudgetMiB > 0
        ? _options.MemoryBudgetMiB << 20
        : GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / 10 * 8;

    public int VcpuBudget => _options.VcpuBudget > 0 ? _options.VcpuBudget : Environment.ProcessorCount * 4;

    public SiloCapacity Report()
    {
        long memory = 0;
        int vcpus = 0, count = 0;
        foreach (var demand in _vms.Values)
        {
            memory += demand.MemoryBytes;
            vcpus += demand.Vcpus;
            count++;
        }

        var (kvm, kernels) = s_backends.Value;
        var (slots, busy, waiting) = (_services.GetService(typeof(LocalSandboxPools)) as LocalSandboxPools)?.Usage() ?? (0, 0, 0);
        return new SiloCapacity
        {
            Silo = _silo.SiloAddress,
            MemoryBudgetBytes = MemoryBudgetBytes,
            MemoryInUseBytes = memory,
            VcpuBudget = VcpuBudget,
            VcpusInUse = vcpus,
            VirtualMachines = count,
            Kvm = kvm,
            KvmRunsKernels = kernels,
            Draining = _draining,
            SandboxSlots = slots,
            SandboxesBusy = busy,
            SandboxCallsWaiting = waiting,
            MigrationEndpoint = MigrationEndpoint,
            ReportedAt = DateTimeOffset.UtcNow,
        };
    }

    public void Dispose() => _changed.Dispose();

    private static (bool, bool) ProbeBackends()
    {
        try
        {
            var availability = BackendSelector.Create(BackendKind.Kvm).GetAvailability();
            return (availability.IsAvailable, availability.IsAvailable && availability.SlowKernelMode is null);
        }
        catch (Exception ex) when (ex is InvalidOperationException or IOException or UnauthorizedAccessException or PlatformNotSupportedException)
        {
            return (false, false);
        }
    }
}
