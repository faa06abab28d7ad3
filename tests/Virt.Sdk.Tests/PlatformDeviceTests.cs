using System.Buffers.Binary;
using System.Text;
using Iced.Intel;
using Virt.Boot;
using Virt.Cpu.Interpreter;
using Virt.Devices;
using Virt.Memory;
using Virt.Sdk.Tests.Snapshots;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Sdk.Tests;

/// <summary>The platform a VM gives its guest: ACPI tables with the FACS, the ACPI PM timer, Multiboot boots and the debug-exit port.</summary>
public sealed class PlatformDeviceTests
{
    private const ulong Load = 0x100000;
    private const ulong Results = 0x200000;
    private const ushort PmTimerPort = VirtualMachineBuilder.AcpiPmTimerPort;

    public static TheoryData<string> Backends => FlatGuestVm.Backends;

    private static CancellationToken Token => TestContext.Current.CancellationToken;

    /// <summary>
    /// A Multiboot kernel with the a.out kludge: the header at file offset 0 (address fields set, so no ELF), code from
    /// offset 0x40, loaded at <paramref name="load"/> and entered at the code.
    /// </summary>
    internal static byte[] MultibootKernel(uint load, Action<Assembler> emit)
    {
        const int codeOffset = 0x40;
        const uint flags = (1u << 1) | (1u << 16); // memory information, address fields
        var code = GuestProgram.Assemble(32, load + codeOffset, emit);
        var image = new byte[codeOffset + code.Length];
        var h = image.AsSpan();
        BinaryPrimitives.WriteUInt32LittleEndian(h, MultibootLoader.HeaderMagic);
        BinaryPrimitives.WriteUInt32LittleEndian(h[4..], flags);
        BinaryPrimitives.WriteUInt32LittleEndian(h[8..], unchecked(0u - MultibootLoader.HeaderMagic - flags));
        BinaryPrimitives.WriteUInt32LittleEndian(h[12..], load);              // header_addr
        BinaryPrimitives.WriteUInt32LittleEndian(h[16..], load);              // load_addr
        BinaryPrimitives.WriteUInt32LittleEndian(h[20..], 0);                 // load_end_addr: the whole file
        BinaryPrimitives.WriteUInt32LittleEndian(h[24..], 0);                 // bss_end_addr: none
        BinaryPrimitives.WriteUInt32LittleEndian(h[28..], load + codeOffset); // entry_addr
        code.CopyTo(image, codeOffset);
        return image;
    }

    private static VirtualMachineBuilder KernelBuilder(string backend, byte[] kernel)
    {
        var builder = backend == "kvm" ? FlatGuestVm.Builder("kvm") : VirtualMachine.CreateBuilder().WithInterpreter();
        string path = Path.Combine(Directory.CreateTempSubdirectory("virt-multiboot").FullName, "kernel.elf");
        File.WriteAllBytes(path, kernel);
        return builder.WithMemory(VirtualMachineBuilder.MinimumLinuxMemory).WithLinuxKernel(path);
    }

    /// <summary>Reports the length of the Multiboot command line (strlen of mbi->cmdline) through the debug-exit port, and stores EAX and EBX.</summary>
    private static void CommandLineLength(Assembler a)
    {
        var loop = a.CreateLabel();
        var done = a.CreateLabel();
        a.mov(edi, 0x30000);
        a.mov(__dword_ptr[edi], eax);
        a.mov(__dword_ptr[edi + 4], ebx);
        a.mov(esi, __dword_ptr[ebx + 16]);
        a.xor(ecx, ecx);
        a.Label(ref loop);
        a.cmp(__byte_ptr[esi + ecx], 0);
        a.je(done);
        a.inc(ecx);
        a.jmp(loop);
        a.Label(ref done);
        a.mov(eax, ecx);
        a.mov(dx, VirtualMachineBuilder.DefaultDebugExitPort);
        a.@out(dx, al);
        a.hlt();
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Multiboot_kernel_linked_below_1_MiB_runs_and_gets_its_command_line_exactly_as_given(string backend)
    {
        const string line = "/boot/kernel.elf  log=3 quiet";
        await using var vm = KernelBuilder(backend, MultibootKernel(0x10000, CommandLineLength))
            .WithKernelCommandLine(line)
            .WithSerialConsole(TextWriter.Null)
            .WithVirtioDiscovery(VirtioDiscovery.CommandLine)
            .WithVirtioRng()
            .WithDebugExit()
            .Build();

        Assert.Equal(line, vm.KernelCommandLine);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(Token);
        timeout.CancelAfter(TimeSpan.FromMinutes(2));
        var exit = await vm.RunAsync(timeout.Token);

        Assert.True(exit.Reason == StopReason.DebugExit, exit.Description);
        Assert.Equal(line.Length, exit.ExitCode);
        Assert.Equal(MultibootLoader.BootloaderMagic, vm.Memory.Read<uint>(new GuestAddress(0x30000)));
        uint mbi = vm.Memory.Read<uint>(new GuestAddress(0x30004));
        var text = new byte[line.Length + 1];
        vm.Memory.Read(new GuestAddress(vm.Memory.Read<uint>(new GuestAddress(mbi + 16))), text);
        Assert.Equal(line + "\0", Encoding.ASCII.GetString(text));
    }

    [Fact]
    public void Multiboot_kernel_over_the_real_mode_vector_table_is_refused_at_build()
    {
        var ex = Assert.Throws<BootImageException>(() => KernelBuilder("interpreter", MultibootKernel(0x0, CommandLineLength)).Build());

        Assert.Equal("load_addr", ex.Field);
        Assert.Contains("interrupt vector table", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Linux_parameters_are_appended_for_linux_kernels_only()
    {
        var config = VirtualMachine.CreateBuilder()
            .WithKernelCommandLine("quiet")
            .WithSerialConsole(TextWriter.Null)
            .WithVirtioDiscovery(VirtioDiscovery.CommandLine)
            .WithVirtioRng()
            .Configuration with { LinuxPlatform = true, InterruptController = true };
        var devices = new DeviceManager(config);

        Assert.Equal("quiet console=ttyS0 virtio_mmio.device=512@0xd0000000:5", KernelCommandLine.Compose(config, KernelFormat.BzImage, devices));
        Assert.Equal("quiet console=ttyS0 virtio_mmio.device=512@0xd0000000:5", KernelCommandLine.Compose(config, KernelFormat.PvhElf, devices));
        Assert.Equal("quiet", KernelCommandLine.Compose(config, KernelFormat.Multiboot, devices));
        Assert.Equal("", KernelCommandLine.Compose(config with { KernelCommandLine = null }, KernelFormat.Multiboot, devices));
        Assert.Equal(" keep  spacing ", KernelCommandLine.Compose(config with { KernelCommandLine = " keep  spacing " }, KernelFormat.Multiboot, devices));
    }

    private static byte Sum(ReadOnlySpan<byte> data)
    {
        byte s = 0;
        foreach (byte b in data)
        {
            s += b;
        }

        return s;
    }

    /// <summary>A table's bytes, after checking its length is sane and its checksum is right.</summary>
    private static byte[] Table(IGuestMemory m, ulong address, string signature)
    {
        uint length = m.Read<uint>(new GuestAddress(address + 4));
        Assert.InRange(length, 36u, 0x10000u);
        var t = new byte[length];
        m.Read(new GuestAddress(address), t);
        Assert.Equal(signature, Encoding.ASCII.GetString(t, 0, 4));
        Assert.True(Sum(t) == 0, $"{signature} checksum");
        return t;
    }

    [Fact]
    public async Task Acpi_tables_in_guest_memory_of_a_built_vm_link_up_with_valid_checksums_facs_and_pm_timer()
    {
        await using var vm = KernelBuilder("interpreter", MultibootKernel(0x100000, CommandLineLength)).Build();
        var m = vm.Memory;

        // Find the RSDP as an OS does: on a 16-byte boundary in the BIOS area 0xE0000-0xFFFFF.
        ulong rsdpAddress = 0;
        var probe = new byte[8];
        for (ulong a = 0xE0000; a < 0x100000 && rsdpAddress == 0; a += 16)
        {
            m.Read(new GuestAddress(a), probe);
            if (Encoding.ASCII.GetString(probe) == "RSD PTR ")
            {
                rsdpAddress = a;
            }
        }

        Assert.NotEqual(0UL, rsdpAddress);
        var rsdp = new byte[36];
        m.Read(new GuestAddress(rsdpAddress), rsdp);
        Assert.Equal(0, Sum(rsdp.AsSpan(0, 20)));
        Assert.Equal(0, Sum(rsdp));
        Assert.Equal(36u, BinaryPrimitives.ReadUInt32LittleEndian(rsdp.AsSpan(20)));

        var xsdt = Table(m, BinaryPrimitives.ReadUInt64LittleEndian(rsdp.AsSpan(24)), "XSDT");
        var listed = Enumerable.Range(0, (xsdt.Length - 36) / 8).Select(i => BinaryPrimitives.ReadUInt64LittleEndian(xsdt.AsSpan(36 + (i * 8)))).ToArray();
        var signatures = listed.Select(a => Encoding.ASCII.GetString(BitConverter.GetBytes(m.Read<uint>(new GuestAddress(a))))).ToArray();
        Assert.Equal(["APIC", "FACP"], signatures.Order());
        var fadt = Table(m, listed[Array.IndexOf(signatures, "FACP")], "FACP");
        Table(m, listed[Array.IndexOf(signatures, "APIC")], "APIC");
        ulong dsdt = BinaryPrimitives.ReadUInt64LittleEndian(fadt.AsSpan(140));
        Assert.Equal((uint)dsdt, BinaryPrimitives.ReadUInt32LittleEndian(fadt.AsSpan(40)));
        Table(m, dsdt, "DSDT");

        // FACS: from FIRMWARE_CTRL only, 64-byte aligned, "FACS", 64 bytes, no checksum, in memory the e820 map reserves.
        uint facs = BinaryPrimitives.ReadUInt32LittleEndian(fadt.AsSpan(36));
        Assert.Equal(0UL, BinaryPrimitives.ReadUInt64LittleEndian(fadt.AsSpan(132)));
        Assert.Equal(0u, facs % 64);
        Assert.DoesNotContain((ulong)facs, listed);
        var f = new byte[64];
        m.Read(new GuestAddress(facs), f);
        Assert.Equal("FACS", Encoding.ASCII.GetString(f, 0, 4));
        Assert.Equal(64u, BinaryPrimitives.ReadUInt32LittleEndian(f.AsSpan(4)));
        Assert.InRange(facs, E820Map.BaseMemoryEnd, E820Map.ExtendedMemoryStart - 64);

        // PM timer: the port the VM's timer device answers on, 32 bits wide as TMR_VAL_EXT says.
        Assert.Equal((uint)PmTimerPort, BinaryPrimitives.ReadUInt32LittleEndian(fadt.AsSpan(76)));
        Assert.Equal(4, fadt[91]);
        Assert.Equal((ulong)PmTimerPort, BinaryPrimitives.ReadUInt64LittleEndian(fadt.AsSpan(212)));
        Assert.NotEqual(0u, BinaryPrimitives.ReadUInt32LittleEndian(fadt.AsSpan(112)) & (1u << 8));
        var timer = Assert.Single(vm.PortBus.Registrations, r => r.Start == PmTimerPort);
        Assert.Equal(4UL, timer.Length);
    }

    /// <summary>Reads the PM timer, waits (bounded) for it to change, twice; stores the three values and the bound left.</summary>
    private static byte[] PmTimerReader() => GuestProgram.Assemble(64, Load, a =>
    {
        a.mov(dx, PmTimerPort);
        a.@in(eax, dx);
        a.mov(r8d, eax);
        foreach (var (previous, next) in new[] { (r8d, r9d), (r9d, r10d) })
        {
            var loop = a.CreateLabel();
            var changed = a.CreateLabel();
            a.mov(ecx, 10_000_000);
            a.Label(ref loop);
            a.@in(eax, dx);
            a.cmp(eax, previous);
            a.jne(changed);
            a.dec(ecx);
            a.jnz(loop);
            a.Label(ref changed);
            a.mov(next, eax);
        }

        a.mov(rdi, Results);
        a.mov(__dword_ptr[rdi], r8d);
        a.mov(__dword_ptr[rdi + 4], r9d);
        a.mov(__dword_ptr[rdi + 8], r10d);
        a.mov(__dword_ptr[rdi + 12], ecx);
        a.hlt();
    });

    private static (uint First, uint Second, uint Third, uint Left) PmTimerReadings(VirtualMachine vm) => (
        vm.Memory.Read<uint>(new GuestAddress(Results)),
        vm.Memory.Read<uint>(new GuestAddress(Results + 4)),
        vm.Memory.Read<uint>(new GuestAddress(Results + 8)),
        vm.Memory.Read<uint>(new GuestAddress(Results + 12)));

    /// <summary>Each backend, and the interpreter with emulated controllers, whose virtual clock then drives the timer.</summary>
    public static TheoryData<string, bool> PmTimerBackends => new()
    {
        { "kvm", false },
        { "interpreter", false },
        { "interpreter", true },
    };

    [Theory]
    [MemberData(nameof(PmTimerBackends))]
    public async Task Flat_guest_reads_the_pm_timer_and_sees_it_advance_monotonically(string backend, bool controllers)
    {
        var builder = FlatGuestVm.Builder(backend).WithAcpiPmTimer();
        if (controllers)
        {
            builder = builder.WithInterruptController();
        }

        await using var vm = builder.WithFlatBinary(PmTimerReader(), new GuestAddress(Load)).WithEntryPoint(new GuestAddress(Load)).Build();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(Token);
        timeout.CancelAfter(TimeSpan.FromMinutes(2));
        var exit = await vm.RunAsync(timeout.Token);

        Assert.True(exit.Reason == StopReason.Halted, exit.Description);
        var (first, second, third, left) = PmTimerReadings(vm);
        Assert.True(left > 0, "the timer did not change within 10 million reads");
        // Forward in the counter's modular arithmetic, by less than half its range (a run takes far less than 10 minutes).
        Assert.InRange(unchecked(second - first), 1u, (uint)int.MaxValue);
        Assert.InRange(unchecked(third - second), 1u, (uint)int.MaxValue);
    }

    [Fact]
    public async Task Pm_timer_on_the_interpreters_virtual_clock_reads_the_same_in_every_run()
    {
        var backend = new InterpreterHypervisor(new InterpreterOptions { Clock = InterpreterClock.Virtual });
        var runs = new List<(uint, uint, uint, uint)>();
        for (int i = 0; i < 2; i++)
        {
            await using var vm = VirtualMachine.CreateBuilder()
                .WithBackend(backend)
                .WithMemoryMiB(16)
                .WithInterruptController()
                .WithAcpiPmTimer()
                .WithFlatBinary(PmTimerReader(), new GuestAddress(Load))
                .WithEntryPoint(new GuestAddress(Load))
                .Build();
            var exit = await vm.RunAsync(Token);
            Assert.True(exit.Reason == StopReason.Halted, exit.Description);
            runs.Add(PmTimerReadings(vm));
        }

        Assert.Equal(runs[0], runs[1]);
        Assert.True(runs[0].Item2 > runs[0].Item1 && runs[0].Item3 > runs[0].Item2, $"readings {runs[0]}");
    }

    [Fact]
    public async Task Restored_vm_keeps_its_debug_exit_width_and_convention_and_its_pm_timer_count()
    {
        const ushort gatePort = 0x91, exitPort = 0xF4;
        const uint waitFor = 0x40_0000; // about 1.2 s of PM timer ticks before the snapshot
        var code = GuestProgram.Assemble(64, Load, a =>
        {
            var wait = a.CreateLabel();
            var poll = a.CreateLabel();
            a.mov(dx, PmTimerPort);
            a.Label(ref wait);
            a.@in(eax, dx);
            a.cmp(eax, waitFor);
            a.jb(wait);
            a.mov(rdi, Results);
            a.mov(__dword_ptr[rdi], eax);
            a.mov(dx, gatePort);
            a.Label(ref poll);
            a.@in(al, dx);
            a.test(al, al);
            a.jz(poll);
            a.mov(dx, PmTimerPort);
            a.@in(eax, dx);
            a.mov(__dword_ptr[rdi + 4], eax);
            a.mov(dx, exitPort);
            a.mov(eax, 0x100);
            a.@out(dx, eax);
            a.hlt();
        });
        using var dir = new TempDirectory();
        string path = Path.Combine(dir.Path, "platform.snap");
        var gate = new PollGate(open: false, 100);
        await using (var vm = VirtualMachine.CreateBuilder()
            .WithInterpreter()
            .WithMemoryMiB(16)
            .WithAcpiPmTimer()
            .WithDebugExit(exitPort, 4, DebugExitConvention.QemuIsaDebugExit)
            .WithPortIoDevice(gatePort, 1, gate, "gate")
            .WithFlatBinary(code, new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load))
            .Build())
        {
            await vm.StartAsync(Token);
            await gate.Polled.Task.WaitAsync(TimeSpan.FromMinutes(2), Token);
            await vm.PauseAsync(Token);
            await vm.SaveSnapshotAsync(path, Token);
            await vm.StopAsync(Token);
        }

        await using var restored = await VirtualMachine.RestoreAsync(path, b => b.WithInterpreter().WithPortIoDevice(gatePort, 1, new PollGate(open: true, 100), "gate"), Token);
        var exit = await restored.RunAsync(Token);

        // 0x100 written 4 bytes wide, reported as (0x100 << 1) | 1: a 1-byte port would have taken 0 and reported 1.
        Assert.True(exit.Reason == StopReason.DebugExit, exit.Description);
        Assert.Equal(0x201, exit.ExitCode);
        uint before = restored.Memory.Read<uint>(new GuestAddress(Results));
        uint after = restored.Memory.Read<uint>(new GuestAddress(Results + 4));
        Assert.True(before >= waitFor && after > before, $"PM timer read 0x{before:x} before the snapshot and 0x{after:x} after the restore");
    }

    [Fact]
    public void Pm_timer_port_is_reserved_for_it()
    {
        var ex = Assert.Throws<ArgumentException>(() => VirtualMachine.CreateBuilder()
            .WithInterpreter()
            .WithAcpiPmTimer()
            .WithPortIoDevice(0x60A, 1, new DebugExitDevice(), "in the way")
            .Build());

        Assert.Contains("ACPI PM timer", ex.Message, StringComparison.Ordinal);
    }

    /// <summary>Width, convention, the value the guest writes, and the exit code expected.</summary>
    public static TheoryData<string, int, DebugExitConvention, uint, int> DebugExitCases()
    {
        var data = new TheoryData<string, int, DebugExitConvention, uint, int>();
        foreach (string backend in new[] { "kvm", "interpreter" })
        {
            data.Add(backend, 1, DebugExitConvention.Raw, 0x2A, 0x2A);
            data.Add(backend, 2, DebugExitConvention.Raw, 0x1234, 0x1234);
            data.Add(backend, 4, DebugExitConvention.Raw, 0x1234_5678, 0x1234_5678);
            data.Add(backend, 1, DebugExitConvention.QemuIsaDebugExit, 0x10, 0x21);
            data.Add(backend, 2, DebugExitConvention.QemuIsaDebugExit, 0x1234, 0x2469);
            data.Add(backend, 4, DebugExitConvention.QemuIsaDebugExit, 0x4000_0000, unchecked((int)0x8000_0001));
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(DebugExitCases))]
    public async Task Debug_exit_of_each_width_and_convention_reports_the_code_the_guest_asked_for(string backend, int width, DebugExitConvention convention, uint value, int expected)
    {
        const ushort port = 0xF4;
        var code = GuestProgram.Assemble(64, Load, a =>
        {
            a.mov(dx, port);
            a.mov(eax, value);
            switch (width)
            {
                case 1: a.@out(dx, al); break;
                case 2: a.@out(dx, ax); break;
                default: a.@out(dx, eax); break;
            }

            a.hlt();
        });
        await using var vm = FlatGuestVm.Builder(backend)
            .WithDebugExit(port, width, convention)
            .WithFlatBinary(code, new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load))
            .Build();

        var exit = await vm.RunAsync(Token);

        Assert.True(exit.Reason == StopReason.DebugExit, exit.Description);
        Assert.Equal(expected, exit.ExitCode);
        Assert.Equal((ulong)width, Assert.Single(vm.PortBus.Registrations, r => r.Start == port).Length);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(3)]
    [InlineData(8)]
    public void Debug_exit_width_other_than_1_2_or_4_is_refused_at_build(int width)
    {
        var ex = Assert.Throws<ArgumentException>(() => VirtualMachine.CreateBuilder().WithInterpreter().WithDebugExit(width: width).Build());

        Assert.Contains("1, 2 or 4", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Debug_exit_running_past_port_ffff_is_refused_at_build()
    {
        var ex = Assert.Throws<ArgumentException>(() => VirtualMachine.CreateBuilder().WithInterpreter().WithDebugExit(0xFFFE, 4).Build());

        Assert.Contains("0xffff", ex.Message, StringComparison.Ordinal);
    }
}
