using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Orleans;
using Orleans.Configuration;
using Orleans.Hosting;
using Orleans.Runtime;
using Orleans.Runtime.Placement;
using Orleans.TestingHost;
using Virt.Testing;
using Xunit;

namespace Virt.Orleans.Tests;

/// <summary>An in-process cluster of two silos that host VM grains, with their snapshots and state in a temporary directory.</summary>
internal sealed class VmCluster : IAsyncDisposable
{
    private const string StorageKey = "VirtOrleansTests:Storage";
    private const string MemoryBudgetKey = "VirtOrleansTests:MemoryBudgetMiB";
    private const string WaitingKey = "VirtOrleansTests:SandboxWaiting";
    private const string ResumeOnArrivalKey = "VirtOrleansTests:ResumeOnArrival";
    private readonly TempDirectory _directory;

    private VmCluster(TempDirectory directory, TestCluster cluster)
    {
        _directory = directory;
        Cluster = cluster;
    }

    public TestCluster Cluster { get; }

    public string StorageDirectory => _directory.Path;

    public IGrainFactory Grains => Cluster.Client;

    public SiloHandle Primary => Cluster.Primary!;

    /// <summary>The second silo: stopping it leaves the primary, which keeps the test cluster's membership table.</summary>
    public SiloHandle Secondary => Cluster.SecondarySilos[0];

    /// <summary>Starts the cluster; each silo gives VMs <paramref name="memoryBudgetMiB"/> (0: the default) and admits <paramref name="sandboxWaiting"/> sandbox calls beyond its pools.</summary>
    public static async Task<VmCluster> StartAsync(long memoryBudgetMiB = 0, int sandboxWaiting = 64, bool resumeOnArrival = false)
    {
        var directory = new TempDirectory();
        var builder = new TestClusterBuilder(2);
        builder.Properties[StorageKey] = directory.Path;
        builder.Properties[MemoryBudgetKey] = memoryBudgetMiB.ToString(System.Globalization.CultureInfo.InvariantCulture);
        builder.Properties[WaitingKey] = sandboxWaiting.ToString(System.Globalization.CultureInfo.InvariantCulture);
        builder.Properties[ResumeOnArrivalKey] = resumeOnArrival ? "true" : "false";
        builder.AddSiloBuilderConfigurator<SiloConfigurator>();
        builder.AddClientBuilderConfigurator<ClientConfigurator>();
        var cluster = builder.Build();
        await cluster.DeployAsync(TestContext.Current.CancellationToken);
        return new VmCluster(directory, cluster);
    }

    /// <summary>The grain for <paramref name="name"/>, activated on <paramref name="silo"/> by the first call made within <paramref name="firstCall"/>.</summary>
    public static async Task<T> OnSiloAsync<T>(SiloHandle silo, Func<Task<T>> firstCall)
    {
        RequestContext.Set(IPlacementDirector.PlacementHintKey, silo.SiloAddress);
        try
        {
            return await firstCall();
        }
        finally
        {
            RequestContext.Remove(IPlacementDirector.PlacementHintKey);
        }
    }

    /// <summary>Calls <paramref name="call"/> until it succeeds: after a silo is killed, calls fail until the cluster has declared it dead.</summary>
    public static async Task<T> UntilAnsweredAsync<T>(Func<Task<T>> call, TimeSpan timeout)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        deadline.CancelAfter(timeout);
        while (true)
        {
            try
            {
                return await call();
            }
            catch (Exception ex) when ((ex is OrleansException or TimeoutException) && !deadline.IsCancellationRequested)
            {
                await Task.Delay(200, deadline.Token);
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        await Cluster.DisposeAsync();
        _directory.Dispose();
    }

    private sealed class ClientConfigurator : IClientBuilderConfigurator
    {
        public void Configure(Microsoft.Extensions.Configuration.IConfiguration configuration, IClientBuilder clientBuilder) => clientBuilder.AddVirtualMachineClient();
    }

    private sealed class SiloConfigurator : ISiloConfigurator
    {
        public void Configure(ISiloBuilder siloBuilder)
        {
            string directory = siloBuilder.Configuration[StorageKey] ?? throw new InvalidOperationException("The test cluster has no storage directory.");
            long budget = long.Parse(siloBuilder.Configuration[MemoryBudgetKey] ?? "0", System.Globalization.CultureInfo.InvariantCulture);
            int waiting = int.Parse(siloBuilder.Configuration[WaitingKey] ?? "64", System.Globalization.CultureInfo.InvariantCulture);
            siloBuilder
                .AddVirtualMachineGrains(o =>
                {
                    o.MemoryBudgetMiB = budget;
                    o.CapacityPublishInterval = TimeSpan.FromMilliseconds(200);
                    o.ResumeOnArrival = siloBuilder.Configuration[ResumeOnArrivalKey] == "true";
                })
                .AddVirtualMachineFileStorage(directory)
                .AddSandboxService(o =>
                {
                    o.MaxWaitingCalls = waiting;
                    o.AddProgram("upper", Sandbox.Sandbox.CreateBuilder().WithExecutable(SandboxPrograms.Upper).WithBackend(BackendKind.Interpreter), poolSize: 2);
                    o.AddProgram("spin", Sandbox.Sandbox.CreateBuilder().WithExecutable(SandboxPrograms.Spin).WithBackend(BackendKind.Interpreter).WithTimeLimit(TimeSpan.FromSeconds(20)), poolSize: 1);
                });

            // A killed silo is declared dead after a few seconds rather than the production default.
            siloBuilder.Configure<ClusterMembershipOptions>(o =>
            {
                o.ProbeTimeout = TimeSpan.FromSeconds(1);
                o.NumMissedProbesLimit = 1;
                o.NumVotesForDeathDeclaration = 1;
                o.TableRefreshTimeout = TimeSpan.FromSeconds(1);
                o.IAmAliveTablePublishTimeout = TimeSpan.FromSeconds(1);
            });
        }
    }
}
