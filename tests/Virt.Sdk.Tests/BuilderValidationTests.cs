using Virt.Boot;
using Virt.Cpu;
using Virt.Devices;
using Virt.Memory;
using Virt.Testing;
using Xunit;

namespace Virt.Sdk.Tests;

public sealed class BuilderValidationTests
{
    private static VirtualMachineBuilder Valid() => VirtualMachine.CreateBuilder()
        .WithInterpreter()
        .WithMemoryMiB(16)
        .WithFlatBinary(new byte[] { 0xF4 }, new GuestAddress(0x100000))
        .WithEntryPoint(new GuestAddress(0x100000));

    [Fact]
    public void Zero_memory_is_refused_with_what_to_change()
    {
        var ex = Assert.Throws<ArgumentException>(() => Valid().WithMemory(0).Build());
        Assert.Contains("WithMemory", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Unaligned_memory_is_refused_with_a_rounded_suggestion()
    {
        var ex = Assert.Throws<ArgumentException>(() => Valid().WithMemory(0x100001).Build());
        Assert.Contains("4 KiB", ex.Message, StringComparison.Ordinal);
        Assert.Contains("1052672", ex.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-1)]
    [InlineData(257)]
    public void Vcpu_count_out_of_range_is_refused(int count)
    {
        var ex = Assert.Throws<ArgumentException>(() => Valid().WithVcpus(count).Build());
        Assert.Contains("WithVcpus", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Entry_outside_ram_is_refused()
    {
        var ex = Assert.Throws<ArgumentException>(() => Valid().WithEntryPoint(new GuestAddress(0x4000000)).Build());
        Assert.Contains("outside guest RAM", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Real_mode_entry_above_1MiB_is_refused()
    {
        var ex = Assert.Throws<ArgumentException>(() => Valid().WithEntryPoint(new GuestAddress(0x100000), StartMode.Real).Build());
        Assert.Contains("real mode", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Image_past_the_end_of_ram_is_refused()
    {
        var ex = Assert.Throws<ArgumentException>(() => Valid().WithFlatBinary(new byte[0x2000], new GuestAddress((16 << 20) - 0x1000)).Build());
        Assert.Contains("does not fit", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Image_over_the_boot_tables_is_refused()
    {
        var ex = Assert.Throws<ArgumentException>(() => Valid().WithFlatBinary(new byte[16], new GuestAddress(0x9000)).Build());
        Assert.Contains("page tables", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Overlapping_port_devices_are_refused_naming_both()
    {
        var ex = Assert.Throws<ArgumentException>(() => Valid()
            .WithSerialConsole(Stream.Null)
            .WithPortIoDevice(0x3FC, 2, new NullPortDevice(), "probe")
            .Build());
        Assert.Contains("serial console", ex.Message, StringComparison.Ordinal);
        Assert.Contains("probe", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Mmio_device_over_ram_is_refused()
    {
        var ex = Assert.Throws<ArgumentException>(() => Valid().WithMmioDevice(new GuestAddress(0x1000), 0x1000, new NullMmioDevice(), "probe").Build());
        Assert.Contains("overlaps guest RAM", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Overlapping_mmio_devices_are_refused()
    {
        var ex = Assert.Throws<ArgumentException>(() => Valid()
            .WithMmioDevice(new GuestAddress(0xD0000000), 0x1000, new NullMmioDevice(), "a")
            .WithMmioDevice(new GuestAddress(0xD0000800), 0x1000, new NullMmioDevice(), "b")
            .Build());
        Assert.Contains("'a'", ex.Message, StringComparison.Ordinal);
        Assert.Contains("'b'", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Unavailable_backend_is_refused_with_the_reason()
    {
        var ex = Assert.Throws<InvalidOperationException>(() => Valid().WithBackend(new UnavailableBackend()).Build());
        Assert.Contains("no hypervisor here", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Whp_on_linux_is_refused_with_a_way_out()
    {
        Assert.SkipWhen(OperatingSystem.IsWindows(), "WHP may be available on Windows.");
        var ex = Assert.Throws<InvalidOperationException>(() => Valid().WithBackend(BackendKind.Whp).Build());
        Assert.Contains("WithInterpreter", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void With_methods_return_new_builders_and_leave_the_original_alone()
    {
        var a = VirtualMachine.CreateBuilder();
        var b = a.WithMemoryMiB(128);
        Assert.NotSame(a, b);
        Assert.Equal(64UL << 20, a.Configuration.MemorySize);
        Assert.Equal(128UL << 20, b.Configuration.MemorySize);
    }

    [Fact]
    public void Missing_flat_binary_file_says_which()
    {
        var ex = Assert.Throws<FileNotFoundException>(() => VirtualMachine.CreateBuilder().WithFlatBinaryFile("/nonexistent/guest.bin", new GuestAddress(0x100000)));
        Assert.Contains("/nonexistent/guest.bin", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Instruction_budget_on_a_hypervisor_is_refused()
    {
        HostRequirements.RequireKvmOrSkip();
        var ex = Assert.Throws<InvalidOperationException>(() => Valid().WithKvm().WithInstructionBudget(100).Build());
        Assert.Contains("WithInterpreter", ex.Message, StringComparison.Ordinal);
    }

    private sealed class NullPortDevice : IPortIoDevice
    {
        public void Read(ushort offset, Span<byte> data) => data.Clear();

        public void Write(ushort offset, ReadOnlySpan<byte> data) { }
    }

    private sealed class NullMmioDevice : IMmioDevice
    {
        public void Read(ulong offset, Span<byte> data) => data.Clear();

        public void Write(ulong offset, ReadOnlySpan<byte> data) { }
    }

    private sealed class UnavailableBackend : IHypervisor
    {
        public string Name => "fake";

        public HypervisorAvailability GetAvailability() => HypervisorAvailability.Unavailable("no hypervisor here");

        public IPartition CreatePartition(IGuestMemoryBacking memory, PartitionOptions options) => throw new InvalidOperationException("unreachable");
    }
}
