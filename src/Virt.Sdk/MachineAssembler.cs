using Microsoft.Extensions.Logging;
using Virt.Boot;
using Virt.Cpu;
using Virt.Devices;
using Virt.Memory;

namespace Virt;

/// <summary>
/// Creates and wires a machine from an immutable <see cref="VirtualMachineConfiguration"/>: guest memory and
/// images, the partition and vCPUs in their start state, the platform and configured devices where the
/// <see cref="DeviceManager"/> placed them, and for Linux guests the boot tables, command line and kernel.
/// It hands the finished <see cref="AssembledMachine"/> to <see cref="VirtualMachine"/>, which only runs it.
/// </summary>
internal static class MachineAssembler
{
    /// <summary>Assembles the machine <paramref name="config"/> describes on <paramref name="selection"/>'s backend.</summary>
    /// <param name="config">The validated configuration.</param>
    /// <param name="selection">The backend to create the partition on.</param>
    /// <param name="devices">The device layout for <paramref name="config"/>; its buses become the machine's.</param>
    /// <param name="logger">Where failures to release resources are logged.</param>
    /// <remarks>If anything fails, everything created so far is released before the exception leaves.</remarks>
    public static AssembledMachine Assemble(VirtualMachineConfiguration config, BackendSelection selection, DeviceManager devices, ILogger logger)
    {
        var resources = new MachineResources(logger, config.Name);
        try
        {
            var memory = CreateMemory(config);
            resources.Add(memory);
            var clock = new GuestClock(Virt.Devices.Interrupts.PcInterruptPlatform.Factory);
            var partition = CreatePartition(config, selection, memory, clock);
            resources.Add(partition);

            var vcpus = new IVirtualCpu[config.VcpuCount];
            for (int i = 0; i < vcpus.Length; i++)
            {
                vcpus[i] = partition.CreateVcpu(i);
                resources.Add(vcpus[i]);
                if (config.Restore is null)
                {
                    InitializeVcpu(config, memory, vcpus[i], i);
                }
            }

            string? commandLine = config.Restore is { } source ? source.Description.KernelCommandLine
                : config.Kernel.IsEmpty ? null : BootLinux(config, memory, vcpus[0], devices, logger);
            var stop = new StopRequests();
            var persistent = new List<Snapshots.IPersistentState>();
            var console = GuestChannels.MonitorConsole(config);
            var serial = AttachPlatformDevices(config, devices, partition, stop, persistent, console);
            if (config.HasAcpiPmTimer)
            {
                var timer = new AcpiPmTimer(clock.Time);
                devices.AttachPlatform(PlatformDevice.AcpiPmTimer, timer);
                persistent.Add(timer);
            }

            devices.AttachDevices(memory, partition, config.LoggerFactory, resources, config.VcpuCount);
            persistent.AddRange(devices.PersistentDevices);
            return new AssembledMachine
            {
                Memory = memory,
                Partition = partition,
                Vcpus = vcpus,
                Ports = devices.Ports,
                Mmio = devices.Mmio,
                Serial = serial,
                KernelCommandLine = commandLine,
                VirtioDevices = devices.VirtioDevices,
                Devices = devices.Devices,
                StopRequests = stop,
                Resources = resources,
                PersistentDevices = persistent,
                Transports = devices.Transports,
                Guest = GuestChannels.Create(config, devices.Transports, console, resources),
            };
        }
        catch
        {
            resources.DisposeAsync().AsTask().GetAwaiter().GetResult();
            throw;
        }
    }

    /// <summary>Guest RAM with the images loaded, or for a restore mapped copy-on-write from the snapshot's memory section.</summary>
    private static GuestMemory CreateMemory(VirtualMachineConfiguration config)
    {
        if (config.Restore is { } restore)
        {
            return GuestMemory.Create(RamLayout.Regions(config.MemorySize, restore.MemoryFile, restore.MemoryOffset));
        }

        var memory = GuestMemory.Create(RamLayout.Regions(config.MemorySize));
        try
        {
            foreach (var image in config.Images)
            {
                memory.Write(image.Address, image.Bytes.Span);
            }
        }
        catch
        {
            memory.Dispose();
            throw;
        }

        return memory;
    }

    private static IPartition CreatePartition(VirtualMachineConfiguration config, BackendSelection selection, GuestMemory memory, GuestClock clock)
    {
        var partition = selection.Backend.CreatePartition(memory, new PartitionOptions
        {
            VcpuCount = config.VcpuCount,
            MaskedCpuidFeatures = config.MaskedCpuidFeatures,
            PhysicalAddressBits = config.PhysicalAddressBits,
            InterruptController = config.InterruptController,
            TrackDirtyPages = config.TrackDirtyPages,
            InterruptPlatform = clock,
        });
        var missing = new List<string>();
        for (int i = 0; i < config.RequiredCpuidFeatures.Count; i++)
        {
            // A loop, not LINQ over the feature struct: that would be framework generic code compiled in every process.
            var f = config.RequiredCpuidFeatures[i];
            if (!CpuidEntry.AnyOffers(partition.SupportedCpuid, f))
            {
                missing.Add(FeatureName(f));
            }
        }

        if (missing.Count > 0)
        {
            partition.Dispose();
            throw new InvalidOperationException(
                $"The {selection.Name} backend cannot give the guest {string.Join(", ", missing)}, which the VM requires "
                + "(WithCpuidFeature or WithCpuModel). Choose a lower CPU model, drop the feature, or use a backend whose processor has it.");
        }

        return partition;
    }

    private static string FeatureName(CpuidFeature f) =>
        s_featureNames.TryGetValue(f, out var name) ? name : $"CPUID leaf 0x{f.Function:x}.{f.Index} {f.Register} bit {f.Bit}";

    private static readonly Dictionary<CpuidFeature, string> s_featureNames = typeof(CpuidFeature)
        .GetProperties(System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.Static)
        .Where(p => p.PropertyType == typeof(CpuidFeature))
        .ToDictionary(p => (CpuidFeature)p.GetValue(null)!, p => p.Name.ToUpperInvariant());

    private static void InitializeVcpu(VirtualMachineConfiguration config, GuestMemory memory, IVirtualCpu vcpu, int index)
    {
        if (config.EntryPoint is not { } entry)
        {
            return;
        }

        var sregs = ProcessorSetup.Prepare(memory, vcpu.GetSpecialRegisters(), config.StartMode);
        var regs = config.InitialRegisters ?? default;
        if (config.StartMode == StartMode.Real)
        {
            ushort segment = (ushort)((entry.Value >> 4) & 0xF000);
            sregs.Cs = SegmentRegister.RealMode(segment, code: true);
            regs.Rip = entry.Value - ((ulong)segment << 4);
        }
        else
        {
            regs.Rip = entry.Value;
        }

        if (config.InitialRegisters is null || config.InitialRegisters.Value.Rsp == 0)
        {
            regs.Rsp = VirtualMachine.DefaultStackTop - ((ulong)index * 0x100);
        }

        if (config.VcpuCount > 1)
        {
            regs.Rdi = (ulong)index;
        }

        regs.Rflags |= 2;
        vcpu.SetSpecialRegisters(sregs);
        vcpu.SetGeneralRegisters(regs);
        if (config.InstructionBudget is { } budget && vcpu is IInstructionCounting counting)
        {
            counting.InstructionBudget = budget;
        }
    }

    private static string BootLinux(VirtualMachineConfiguration config, GuestMemory memory, IVirtualCpu boot, DeviceManager devices, ILogger logger)
    {
        var acpi = AcpiTables.Write(memory, new AcpiTablesOptions
        {
            ProcessorCount = config.VcpuCount,
            PmTimerPort = config.HasAcpiPmTimer ? AcpiPmTimer.DefaultPort : (ushort)0,
            PmTimer32Bit = true,
            Com1 = config.HasSerialConsole,
            VirtioMmioDevices = config.VirtioDiscovery == VirtioDiscovery.Acpi ? devices.AcpiVirtioDevices : [],
            Devices = devices.AcpiDevices,
        });

        // Linux restarts through the real-mode reset vector on hardware-reduced ACPI machines without EFI.
        ResetVector.Install(memory);

        string commandLine = KernelCommandLine.Compose(config, KernelImage.Detect(config.Kernel.Span), devices);
        var options = new LinuxBootOptions
        {
            CommandLine = commandLine,
            Initrd = config.Initrd,
            AcpiRsdpAddress = acpi.Rsdp,
            DecompressKernelOnHost = config.DecompressKernelOnHost,
        };
        var result = KernelImage.Load(memory, config.Kernel.Span, options, boot.GetSpecialRegisters());
        VirtualMachineDiagnostics.LogKernelLoaded(logger, config.Name, result.Mode, result.EntryPoint.Value,
            result.KernelDecompressedOnHost ? "decompressed on the host" : "as it is");
        boot.SetSpecialRegisters(result.SpecialRegisters);
        boot.SetGeneralRegisters(result.Registers);
        return commandLine;
    }

    /// <summary>Creates the devices the VM provides itself and registers them where the device manager reserved their ports.</summary>
    /// <returns>The serial console, if the VM has one.</returns>
    private static Serial16550? AttachPlatformDevices(VirtualMachineConfiguration config, DeviceManager devices, IPartition partition, StopRequests stop, List<Snapshots.IPersistentState> persistent, Stream? console)
    {
        void Attach(PlatformDevice which, IPortIoDevice device)
        {
            devices.AttachPlatform(which, device);
            if (device is Snapshots.IPersistentState state)
            {
                persistent.Add(state);
            }
        }

        Serial16550? serial = null;
        if (config.HasSerialConsole)
        {
            var irq = new PartitionInterruptLine(partition, Serial16550.Com1Irq);
            serial = new Serial16550(irq, console!);
            Attach(PlatformDevice.SerialConsole, serial);
        }

        if (config.DebugExitPort is not null)
        {
            Attach(PlatformDevice.DebugExit, new DebugExitDevice(
                code => stop.Request(new VirtualMachineExit
                {
                    Reason = StopReason.DebugExit,
                    ExitCode = code,
                    Description = $"debug exit with code {code}",
                }),
                config.DebugExitWidth,
                config.DebugExitConvention));
        }

        if (config.LinuxPlatform)
        {
            var reset = () => stop.Request(new VirtualMachineExit { Reason = StopReason.Reset, Description = "the guest reset the machine" });
            Attach(PlatformDevice.KeyboardController, new I8042Controller(reset, null, null));
            Attach(PlatformDevice.Rtc, new CmosRtc(TimeProvider.System));
            Attach(PlatformDevice.AcpiSleep, new AcpiSleepDevice(
                () => stop.Request(new VirtualMachineExit { Reason = StopReason.PowerOff, Description = "the guest powered the machine off" }),
                reset));
            Attach(PlatformDevice.PciHostBridge, new PciHostBridge());
        }

        return serial;
    }
}
