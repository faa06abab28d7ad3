using System.Buffers.Binary;
using Iced.Intel;
using Virt.Boot;
using Virt.Devices;
using Virt.Devices.Virtio;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Sdk.Tests;

/// <summary>Devices added with WithDevice and WithVirtioDevice, driven by flat guests on every backend the host has.</summary>
public sealed class UserDeviceTests
{
    private const ulong Load = 0x100000;
    private const ulong Results = 0x200000;
    private const ulong Idt = 0x101000;
    private const ulong IdtPointer = 0x102000;
    private const ulong Handler = 0x103000;
    private const ushort DoorbellPort = 0x510;

    public static TheoryData<string> Backends => FlatGuestVm.Backends;

    private static VirtualMachineBuilder Builder(string backend) => FlatGuestVm.Builder(backend);

    private static byte[] Code(Action<Assembler> emit, ulong origin = Load) => GuestProgram.Assemble(64, origin, emit);

    private static void DebugExit(Assembler a)
    {
        a.mov(dx, VirtualMachineBuilder.DefaultDebugExitPort);
        a.@out(dx, al);
        a.hlt();
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Guest_drives_a_port_device_and_an_mmio_device_where_the_vm_placed_them(string backend)
    {
        Accumulator? accumulator = null;
        Scratchpad? scratchpad = null;
        await using var vm = Builder(backend)
            .WithDevice("accumulator", new DeviceResources { PortCount = 4 }, _ => accumulator = new Accumulator())
            .WithDevice("scratchpad", new DeviceResources { MmioSize = 0x100 }, _ => scratchpad = new Scratchpad())
            .WithFlatBinary(new byte[0x1000], new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load))
            .Build();

        Assert.Equal(
            [
                new DevicePlacement("accumulator", 0x1000, 4, null, 0, null),
                new DevicePlacement("scratchpad", null, 0, new GuestAddress(VirtualMachineBuilder.VirtioMmioBase), 0x100, null),
            ],
            vm.Devices);

        // The guest learns where the devices went from the host, which writes the program after Build.
        ushort port = vm.Devices[0].Port!.Value;
        ulong window = vm.Devices[1].MmioAddress!.Value.Value;
        vm.Memory.Write(new GuestAddress(Load), Code(a =>
        {
            a.mov(dx, port);
            a.mov(eax, 5);
            a.@out(dx, eax);
            a.mov(eax, 7);
            a.@out(dx, eax);
            a.@in(eax, dx);
            a.mov(rdi, Results);
            a.mov(__dword_ptr[rdi], eax);
            a.mov(rbx, window);
            a.mov(eax, __dword_ptr[rbx]);
            a.mov(__dword_ptr[rdi + 4], eax);
            a.mov(__dword_ptr[rbx + 8], 0x41);
            a.mov(eax, __dword_ptr[rbx + 8]);
            a.mov(__dword_ptr[rdi + 8], eax);
            a.hlt();
        }));

        var exit = await vm.RunAsync(TestContext.Current.CancellationToken);

        Assert.True(exit.Reason == StopReason.Halted, exit.Description);
        Assert.Equal(12u, accumulator!.Total);
        Assert.Equal(12u, vm.Memory.Read<uint>(new GuestAddress(Results)));
        Assert.Equal(Scratchpad.Magic, vm.Memory.Read<uint>(new GuestAddress(Results + 4)));
        Assert.Equal(0x42u, vm.Memory.Read<uint>(new GuestAddress(Results + 8)));
        Assert.Equal(0x41UL, scratchpad!.Stored);
    }

    /// <summary>Each backend with each route a line takes: an ISA IRQ the VM picks through the 8259 PIC, a fixed IOAPIC-only line through the IOAPIC and local APIC.</summary>
    public static TheoryData<string, string> BackendsAndRoutes => new()
    {
        { "kvm", "pic" },
        { "kvm", "ioapic" },
        { "interpreter", "pic" },
        { "interpreter", "ioapic" },
    };

    [Theory]
    [MemberData(nameof(BackendsAndRoutes))]
    public async Task Interrupt_raised_by_a_device_reaches_the_guest_on_the_line_the_vm_gave_it(string backend, string route)
    {
        const ulong ioApic = 0xFEC0_0000, localApic = 0xFEE0_0000;
        bool viaPic = route == "pic";
        uint expectedIrq = viaPic ? 5u : 16u;
        int vector = viaPic ? 0x20 + (int)expectedIrq : 0x50;
        var resources = viaPic
            ? new DeviceResources { Port = DoorbellPort, PortCount = 1, Interrupt = true }
            : new DeviceResources { Port = DoorbellPort, PortCount = 1, Irq = expectedIrq };
        Doorbell? doorbell = null;
        var builder = Builder(backend)
            .WithInterruptController()
            .WithDebugExit()
            .WithDevice("doorbell", resources, context => doorbell = new Doorbell(context.InterruptLine));

        // Only the expected vector has a gate: an interrupt on any other line would end in a triple fault.
        var idt = new byte[256 * 16];
        BinaryPrimitives.WriteUInt64LittleEndian(idt.AsSpan(vector * 16), (Handler & 0xFFFF) | ((ulong)ProcessorSetup.KernelCode64 << 16) | (0x8EUL << 40) | (((Handler >> 16) & 0xFFFF) << 48));
        BinaryPrimitives.WriteUInt64LittleEndian(idt.AsSpan((vector * 16) + 8), Handler >> 32);
        var idtPointer = new byte[10];
        BinaryPrimitives.WriteUInt16LittleEndian(idtPointer, (ushort)(idt.Length - 1));
        BinaryPrimitives.WriteUInt64LittleEndian(idtPointer.AsSpan(2), Idt);

        var main = Code(a =>
        {
            a.mov(rax, IdtPointer);
            a.lidt(__[rax]);
            // PIC: master vectors 0x20-0x27, slave 0x28-0x2F; unmasked only the doorbell's line when it goes through the PIC.
            int masterMask = viaPic ? 0xFF & ~(1 << (int)expectedIrq) : 0xFF;
            foreach (var (p, value) in new (int, int)[] { (0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, masterMask), (0xA0, 0x11), (0xA1, 0x28), (0xA1, 0x02), (0xA1, 0x01), (0xA1, 0xFF) })
            {
                a.mov(al, (byte)value);
                a.@out((byte)p, al);
            }

            if (!viaPic)
            {
                // IOAPIC redirection entry of the pin: the vector, fixed delivery to APIC 0, edge, active high, unmasked.
                a.mov(rdi, ioApic);
                a.mov(__dword_ptr[rdi], 0x10 + (2 * (int)expectedIrq));
                a.mov(__dword_ptr[rdi + 0x10], vector);
                a.mov(__dword_ptr[rdi], 0x11 + (2 * (int)expectedIrq));
                a.mov(__dword_ptr[rdi + 0x10], 0);
                a.mov(rdi, localApic);
                a.mov(__dword_ptr[rdi + 0xF0], 0x1FF); // SVR: software enable, spurious vector 0xFF
            }

            a.xor(r15, r15);
            a.mov(dx, DoorbellPort);
            a.@out(dx, al);
            var wait = a.CreateLabel();
            a.Label(ref wait);
            a.sti();
            a.hlt();
            a.cli();
            a.cmp(r15, 1);
            a.jb(wait);
            a.mov(eax, r15d);
            a.add(al, 0x40);
            DebugExit(a);
        });
        var handler = Code(
            a =>
            {
                a.inc(r15);
                a.mov(dx, DoorbellPort);
                a.@in(al, dx);      // acknowledges: the doorbell lowers its line
                if (viaPic)
                {
                    a.mov(al, 0x20);
                    a.@out(0x20, al);   // non-specific EOI to the master PIC
                }
                else
                {
                    a.mov(rdi, localApic);
                    a.mov(__dword_ptr[rdi + 0xB0], 0); // local APIC EOI
                }

                a.iretq();
            },
            Handler);

        await using var vm = builder
            .WithFlatBinary(main, new GuestAddress(Load))
            .WithFlatBinary(idt, new GuestAddress(Idt))
            .WithFlatBinary(idtPointer, new GuestAddress(IdtPointer))
            .WithFlatBinary(handler, new GuestAddress(Handler))
            .WithEntryPoint(new GuestAddress(Load))
            .Build();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        timeout.CancelAfter(TimeSpan.FromSeconds(30));

        var exit = await vm.RunAsync(timeout.Token);

        Assert.Equal(new DevicePlacement("doorbell", DoorbellPort, 1, null, 0, expectedIrq), Assert.Single(vm.Devices));
        Assert.True(exit.Reason == StopReason.DebugExit, exit.Description);
        Assert.Equal(0x41, exit.ExitCode);
        Assert.Equal(1, doorbell!.Rings);
        Assert.Equal(1, doorbell.Acknowledged);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task User_virtio_device_gets_the_next_window_and_line_and_its_command_line_entry(string backend)
    {
        var code = Code(a =>
        {
            a.mov(rsi, VirtualMachineBuilder.VirtioMmioBase + 0x1000);
            a.mov(rdi, Results);
            a.mov(eax, __dword_ptr[rsi]);
            a.mov(__dword_ptr[rdi], eax);
            a.mov(eax, __dword_ptr[rsi + 8]);
            a.mov(__dword_ptr[rdi + 4], eax);
            a.mov(eax, __dword_ptr[rsi + 0x100]);
            a.mov(__dword_ptr[rdi + 8], eax);
            a.hlt();
        });
        await using var vm = Builder(backend)
            .WithVirtioRng()
            .WithVirtioDevice("virtio-probe", _ => new ProbeVirtioDevice())
            .WithFlatBinary(code, new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load))
            .Build();

        var exit = await vm.RunAsync(TestContext.Current.CancellationToken);

        Assert.True(exit.Reason == StopReason.Halted, exit.Description);
        Assert.Equal(new VirtioDeviceInfo("virtio-probe", new GuestAddress(VirtualMachineBuilder.VirtioMmioBase + 0x1000), VirtioMmioTransport.WindowSize, 6), vm.VirtioDevices[1]);
        Assert.Equal("virtio_mmio.device=512@0xd0000000:5 virtio_mmio.device=512@0xd0001000:6", vm.KernelCommandLineFragments);
        Assert.Equal(0x74726976u, vm.Memory.Read<uint>(new GuestAddress(Results)));
        Assert.Equal((uint)ProbeVirtioDevice.Type, vm.Memory.Read<uint>(new GuestAddress(Results + 4)));
        Assert.Equal(ProbeVirtioDevice.ConfigValue, vm.Memory.Read<uint>(new GuestAddress(Results + 8)));
        Assert.Empty(vm.Devices);
    }

    [Theory]
    [InlineData("virt0001")]
    [InlineData("VIRT00001")]
    [InlineData("PN10C0F")]
    public void A_device_with_a_malformed_acpi_hardware_id_is_refused_when_added(string id)
    {
        var ex = Assert.Throws<ArgumentException>(() => VirtualMachine.CreateBuilder()
            .WithDevice("bad", new DeviceResources { PortCount = 1, AcpiHardwareId = id }, _ => new Accumulator()));
        Assert.Contains(id, ex.Message, StringComparison.Ordinal);
        Assert.Contains("VIRT0001", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task User_virtio_device_is_announced_on_the_kernel_command_line_of_a_linux_guest()
    {
        string kernel = Path.Combine(RepositoryPaths.LinuxGuestKit, "vmlinuz");
        Assert.SkipUnless(File.Exists(kernel), "The guest kit is missing; run scripts/get-linux-guest.sh.");
        await using var vm = VirtualMachine.CreateBuilder()
            .WithInterpreter()
            .WithMemoryMiB(256)
            .WithLinuxKernel(kernel)
            .WithKernelCommandLine("quiet")
            .WithVirtioDiscovery(VirtioDiscovery.CommandLine)
            .WithVirtioDevice("virtio-probe", _ => new ProbeVirtioDevice())
            .Build();

        Assert.Equal("quiet virtio_mmio.device=512@0xd0000000:5", vm.KernelCommandLine);
    }

    /// <summary>Adds every 32-bit value written at offset 0; reads return the total.</summary>
    private sealed class Accumulator : IPortIoDevice
    {
        private uint _total;

        public uint Total => Volatile.Read(ref _total);

        public void Read(ushort offset, Span<byte> data)
        {
            Span<byte> value = stackalloc byte[4];
            BinaryPrimitives.WriteUInt32LittleEndian(value, Total);
            value[..Math.Min(4, data.Length)].CopyTo(data);
        }

        public void Write(ushort offset, ReadOnlySpan<byte> data)
        {
            Span<byte> value = stackalloc byte[4];
            data[..Math.Min(4, data.Length)].CopyTo(value);
            Interlocked.Add(ref _total, BinaryPrimitives.ReadUInt32LittleEndian(value));
        }
    }

    /// <summary>A magic number at offset 0; a register at offset 8 that reads back what was written plus one.</summary>
    private sealed class Scratchpad : IMmioDevice
    {
        public const uint Magic = 0x5EC0_0001;
        private ulong _stored;

        public ulong Stored => Interlocked.Read(ref _stored);

        public void Read(ulong offset, Span<byte> data)
        {
            Span<byte> value = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(value, offset == 8 ? Stored + 1 : offset == 0 ? Magic : 0);
            value[..data.Length].CopyTo(data);
        }

        public void Write(ulong offset, ReadOnlySpan<byte> data)
        {
            if (offset == 8)
            {
                Span<byte> value = stackalloc byte[8];
                data.CopyTo(value);
                Interlocked.Exchange(ref _stored, BinaryPrimitives.ReadUInt64LittleEndian(value));
            }
        }
    }

    /// <summary>A write rings (raises the line), a read acknowledges (lowers it).</summary>
    private sealed class Doorbell(IInterruptLine line) : IPortIoDevice
    {
        private int _rings;
        private int _acknowledged;

        public int Rings => Volatile.Read(ref _rings);

        public int Acknowledged => Volatile.Read(ref _acknowledged);

        public void Read(ushort offset, Span<byte> data)
        {
            Interlocked.Increment(ref _acknowledged);
            line.Lower();
            data.Fill((byte)Rings);
        }

        public void Write(ushort offset, ReadOnlySpan<byte> data)
        {
            Interlocked.Increment(ref _rings);
            line.Raise();
        }
    }

    /// <summary>A virtio device of an unassigned type with one queue and a 4-byte configuration space.</summary>
    private sealed class ProbeVirtioDevice : IVirtioDevice
    {
        public const VirtioDeviceType Type = (VirtioDeviceType)42;
        public const uint ConfigValue = 0xC0FF_EE42;

        public VirtioDeviceType DeviceType => Type;

        public ulong DeviceFeatures => 0;

        public IReadOnlyList<ushort> QueueMaxSizes { get; } = [16];

        public int ConfigSize => 4;

        public void ReadConfig(int offset, Span<byte> data)
        {
            Span<byte> config = stackalloc byte[4];
            BinaryPrimitives.WriteUInt32LittleEndian(config, ConfigValue);
            data.Clear();
            if (offset < 4)
            {
                config[offset..Math.Min(4, offset + data.Length)].CopyTo(data);
            }
        }

        public void WriteConfig(int offset, ReadOnlySpan<byte> data)
        {
            // Read-only configuration.
        }

        public void Activate(VirtioDeviceContext context)
        {
            // The tests only probe the transport; the device serves no requests.
        }

        public void QueueNotified(int queueIndex)
        {
            // No requests to serve.
        }

        public void Reset()
        {
            // No state to reset.
        }
    }
}
