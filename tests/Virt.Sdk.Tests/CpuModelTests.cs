using Virt.Boot;
using Virt.Cpu;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Sdk.Tests;

/// <summary>The guest's processor model: required and hidden CPUID features, and the physical address width.</summary>
public sealed class CpuModelTests
{
    private const ulong Load = 0x100000;
    private const ulong Result = 0x200000;

    public static TheoryData<string> Backends => FlatGuestVm.Backends;

    /// <summary>Runs CPUID leaf <paramref name="leaf"/> in the guest and returns EAX, EBX, ECX and EDX as it saw them.</summary>
    private static async Task<uint[]> GuestCpuidAsync(VirtualMachineBuilder builder, uint leaf)
    {
        var code = GuestProgram.Assemble(64, Load, a =>
        {
            a.mov(eax, leaf);
            a.xor(ecx, ecx);
            a.cpuid();
            a.mov(rdi, Result);
            a.mov(__dword_ptr[rdi], eax);
            a.mov(__dword_ptr[rdi + 4], ebx);
            a.mov(__dword_ptr[rdi + 8], ecx);
            a.mov(__dword_ptr[rdi + 12], edx);
            a.mov(dx, VirtualMachineBuilder.DefaultDebugExitPort);
            a.mov(al, 0);
            a.@out(dx, al);
            a.hlt();
        });
        await using var vm = builder
            .WithFlatBinary(code, new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load), StartMode.Long64)
            .WithDebugExit()
            .Build();
        var exit = await vm.RunAsync(TestContext.Current.CancellationToken);
        Assert.True(exit.Reason == StopReason.DebugExit, exit.Description);
        return [.. Enumerable.Range(0, 4).Select(i => vm.Memory.Read<uint>(new GuestAddress(Result + (ulong)(i * 4))))];
    }

    [Fact]
    public async Task The_baseline_model_hides_popcnt_and_cx16_from_the_guest()
    {
        // On KVM a hidden feature stays hidden only where the guest's CPUID exits to KVM (hardware virtualization, or CPUID
        // faulting); this host's paravirtual KVM runs CPUID natively, so the check runs on the interpreter.
        var seen = await GuestCpuidAsync(FlatGuestVm.Builder("interpreter").WithCpuModel(CpuModel.X64V1), 1);
        Assert.Equal(0u, seen[2] & (1u << 23)); // POPCNT
        Assert.Equal(0u, seen[2] & (1u << 13)); // CMPXCHG16B
        Assert.NotEqual(0u, seen[3] & (1u << 26)); // SSE2 stays
        var full = await GuestCpuidAsync(FlatGuestVm.Builder("interpreter"), 1);
        Assert.NotEqual(0u, full[2] & (1u << 23));
    }

    [Fact]
    public async Task The_interpreter_gives_x86_64_v2_and_v3_and_refuses_v4_naming_the_avx512_features_it_lacks()
    {
        var seen = await GuestCpuidAsync(FlatGuestVm.Builder("interpreter").WithCpuModel(CpuModel.X64V2), 1);
        const uint v2Ecx = (1u << 0) | (1u << 9) | (1u << 13) | (1u << 19) | (1u << 20) | (1u << 23); // SSE3 SSSE3 CX16 SSE4.1 SSE4.2 POPCNT
        const uint v3Ecx = (1u << 12) | (1u << 22) | (1u << 26) | (1u << 28) | (1u << 29); // FMA MOVBE XSAVE AVX F16C
        Assert.Equal(v2Ecx, seen[2] & v2Ecx);
        Assert.Equal(0u, seen[2] & v3Ecx); // v2 hides the v3 features

        var v3 = await GuestCpuidAsync(FlatGuestVm.Builder("interpreter").WithCpuModel(CpuModel.X64V3), 1);
        Assert.Equal(v2Ecx | v3Ecx, v3[2] & (v2Ecx | v3Ecx));
        var v3Leaf7 = await GuestCpuidAsync(FlatGuestVm.Builder("interpreter").WithCpuModel(CpuModel.X64V3), 7);
        Assert.NotEqual(0u, v3Leaf7[1] & (1u << 5)); // AVX2

        var e = Assert.Throws<InvalidOperationException>(() => FlatGuestVm.Builder("interpreter").WithCpuModel(CpuModel.X64V4).Build());
        Assert.Contains("The interpreter backend cannot give the guest", e.Message, StringComparison.Ordinal);
        Assert.Contains("AVX512", e.Message, StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain("AVX2", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("FMA", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Kvm_gives_a_required_feature_its_table_offers_and_refuses_one_it_does_not()
    {
        HostRequirements.RequireKvm();
        var seen = await GuestCpuidAsync(FlatGuestVm.Builder("kvm").WithCpuidFeature(CpuidFeature.Cx16), 1);
        Assert.NotEqual(0u, seen[2] & (1u << 13));

        // A leaf-1 bit no processor defines (ECX bit 16 is reserved) is never in KVM's table.
        var reserved = new CpuidFeature(1, 0, CpuidRegister.Ecx, 16);
        var e = Assert.Throws<InvalidOperationException>(() => FlatGuestVm.Builder("kvm").WithCpuidFeature(reserved).Build());
        Assert.Contains("The kvm backend cannot give the guest CPUID leaf 0x1.0 Ecx bit 16", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_feature_required_after_being_hidden_is_required_only()
    {
        var b = VirtualMachine.CreateBuilder().WithoutCpuidFeature(CpuidFeature.Popcnt).WithCpuidFeature(CpuidFeature.Popcnt);
        var m = CpuModel.X64V1.With(CpuidFeature.Popcnt);
        Assert.Contains(CpuidFeature.Popcnt, m.Required);
        Assert.DoesNotContain(CpuidFeature.Popcnt, m.Hidden);
        Assert.NotNull(b);
    }

    [Fact]
    public async Task Kvm_reports_the_physical_address_width_asked_for()
    {
        HostRequirements.RequireKvm();
        var seen = await GuestCpuidAsync(FlatGuestVm.Builder("kvm").WithPhysicalAddressBits(36), 0x80000008);
        Assert.Equal(36u, seen[0] & 0xFF);
    }

    [Fact]
    public void A_width_the_backend_cannot_give_is_refused_with_what_it_can()
    {
        var e = Assert.Throws<ArgumentException>(() => FlatGuestVm.Builder("interpreter").WithPhysicalAddressBits(36).Build());
        Assert.Contains("implements exactly 40", e.Message, StringComparison.Ordinal);
        if (HostRequirements.KvmUnavailableReason() is null)
        {
            var k = Assert.Throws<ArgumentException>(() => FlatGuestVm.Builder("kvm").WithPhysicalAddressBits(52).Build());
            Assert.Contains("KVM on this host gives a guest 32 to", k.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Ram_that_the_width_cannot_address_is_refused()
    {
        var e = Assert.Throws<ArgumentException>(() => VirtualMachine.CreateBuilder().WithInterpreter().WithMemory(6UL << 30).WithPhysicalAddressBits(32).Build());
        Assert.Contains("Guest RAM reaches 0x1afffffff, which 32 physical address bits cannot address", e.Message, StringComparison.Ordinal);
    }
}
