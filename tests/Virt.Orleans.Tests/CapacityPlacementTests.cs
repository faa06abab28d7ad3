using Orleans.Runtime;
using Xunit;

namespace Virt.Orleans.Tests;

/// <summary>The placement rule on its own: room first, then hardware KVM for kernel guests, then the most free memory.</summary>
public sealed class CapacityPlacementTests
{
    private static readonly SiloAddress A = SiloAddress.FromParsableString("127.0.0.1:11111@1");
    private static readonly SiloAddress B = SiloAddress.FromParsableString("127.0.0.1:11112@1");
    private static readonly SiloAddress C = SiloAddress.FromParsableString("127.0.0.1:11113@1");

    private static SiloCapacity Silo(SiloAddress silo, long freeMiB, int freeVcpus = 8, bool kvm = false, bool kernels = false, bool draining = false, int vms = 0) => new()
    {
        Silo = silo,
        MemoryBudgetBytes = 1L << 40,
        MemoryInUseBytes = (1L << 40) - (freeMiB << 20),
        VcpuBudget = 16,
        VcpusInUse = 16 - freeVcpus,
        VirtualMachines = vms,
        Kvm = kvm,
        KvmRunsKernels = kernels,
        Draining = draining,
    };

    private static VirtualMachineDemand Demand(long mib, int vcpus = 1, bool kernel = false, bool kvm = false) => new(mib << 20, vcpus, kernel, kvm);

    [Fact]
    public void The_silo_with_the_most_free_memory_wins_among_those_with_room()
    {
        var chosen = CapacityPlacementDirector.Choose([Silo(A, 100), Silo(B, 300), Silo(C, 200)], Demand(64), out _);
        Assert.Equal(B, chosen);
    }

    [Fact]
    public void Draining_silos_and_silos_without_enough_vcpus_or_memory_are_passed_over()
    {
        var chosen = CapacityPlacementDirector.Choose([Silo(A, 4000, draining: true), Silo(B, 3000, freeVcpus: 1), Silo(C, 128)], Demand(64, vcpus: 2), out _);
        Assert.Equal(C, chosen);
    }

    [Fact]
    public void A_kernel_guest_prefers_a_silo_whose_kvm_runs_kernels_in_hardware_even_with_less_memory_free()
    {
        var silos = new[] { Silo(A, 4000, kvm: true), Silo(B, 512, kvm: true, kernels: true), Silo(C, 8000) };
        Assert.Equal(B, CapacityPlacementDirector.Choose(silos, Demand(256, kernel: true), out _));
        Assert.Equal(C, CapacityPlacementDirector.Choose(silos, Demand(256), out _)); // a flat guest: memory decides
        Assert.Equal(C, CapacityPlacementDirector.Choose(silos, Demand(1024, kernel: true), out _)); // no hardware KVM with room: the most free memory
    }

    [Fact]
    public void A_vm_that_asks_for_kvm_goes_only_to_a_silo_with_kvm_and_one_that_fits_nowhere_is_refused_with_each_silos_room()
    {
        Assert.Equal(A, CapacityPlacementDirector.Choose([Silo(A, 100, kvm: true), Silo(B, 900)], Demand(64, kvm: true), out _));
        Assert.Null(CapacityPlacementDirector.Choose([Silo(A, 100), Silo(B, 200, draining: true)], Demand(512), out string refusal));
        Assert.Contains("No silo has room for a VM of 512 MiB", refusal, StringComparison.Ordinal);
        Assert.Contains("100 MiB", refusal, StringComparison.Ordinal);
        Assert.Contains("is draining", refusal, StringComparison.Ordinal);
    }

    [Fact]
    public void A_vm_demand_survives_the_request_context_and_a_foreign_value_is_ignored()
    {
        var demand = Demand(48, vcpus: 3, kernel: true, kvm: true);
        Assert.Equal(demand, VirtualMachineDemand.Decode(demand.Encode()));
        Assert.Null(VirtualMachineDemand.Decode("not,a,demand"));
        Assert.Null(VirtualMachineDemand.Decode(42));
    }
}
