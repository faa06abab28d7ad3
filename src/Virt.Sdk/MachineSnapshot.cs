using Virt.Cpu;
using Virt.Snapshots;

namespace Virt;

/// <summary>
/// How a machine maps to a snapshot file and back: the sections it writes (description, partition state, vCPUs,
/// devices, memory), what a restore takes from the file and what it checks against the machine it rebuilt.
/// </summary>
internal static class MachineSnapshot
{
    /// <summary>The snapshot section that holds guest RAM.</summary>
    private const string MemorySection = "memory0";

    /// <summary>Restores the snapshot file at <paramref name="path"/> (see <see cref="VirtualMachine.RestoreAsync(string, Func{VirtualMachineBuilder, VirtualMachineBuilder}?, CancellationToken)"/>).</summary>
    public static async Task<VirtualMachine> RestoreFileAsync(string path, Func<VirtualMachineBuilder, VirtualMachineBuilder>? configure, CancellationToken cancellationToken)
    {
        using var reader = SnapshotReader.Open(path);
        return await VirtualMachine.RestoreCoreAsync(Open(reader), configure, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Writes every section of the machine: its description, the partition's state, the vCPUs, the devices and (unless
    /// <paramref name="includeMemory"/> is false, as for a migration, which sends memory on its own) memory.
    /// </summary>
    public static void Write(SnapshotWriter writer, VirtualMachineConfiguration config, AssembledMachine machine, BackendSelection selection, bool includeMemory = true)
    {
        WriteDescription(writer, config, machine, selection);
        foreach (var state in machine.Partition.PersistentState)
        {
            writer.AddState(state);
        }

        for (int i = 0; i < machine.Vcpus.Length; i++)
        {
            var vcpu = new StateWriter();
            VcpuStateCodec.Write(vcpu, machine.Vcpus[i].GetState());
            writer.AddSection(VcpuStateCodec.SectionName(i), VcpuStateCodec.Version, vcpu.WrittenMemory.Span);
        }

        foreach (var device in machine.PersistentDevices)
        {
            writer.AddState(device);
        }

        if (!includeMemory)
        {
            return;
        }

        var memory = machine.Memory;
        writer.AddMemory(MemorySection, memory.TotalSize, (offset, page) => memory.Read(RamLayout.ToGuestAddress(offset), page));
    }

    /// <summary>
    /// Writes the machine's description section alone: what a migration sends ahead of its last pages so the receiver
    /// can build the machine meanwhile. It does not change while the VM runs, so the VM need not be paused.
    /// </summary>
    public static void WriteDescription(SnapshotWriter writer, VirtualMachineConfiguration config, AssembledMachine machine, BackendSelection selection)
    {
        var w = new StateWriter();
        Describe(config, machine, selection).Write(w);
        writer.AddSection(MachineDescription.SectionName, MachineDescription.Version, w.WrittenMemory.Span);
    }

    /// <summary>
    /// Saves the state of a machine built for a restore and not yet run, and loads it back into it: the machine is as it
    /// was, and the code that loads a state has run once, so a migration's last step (load the state the sender sends
    /// while its guest is paused) does not wait for it to be compiled. A failure here is left to that real load to report.
    /// </summary>
    public static void RehearseRestore(VirtualMachineConfiguration config, AssembledMachine machine, BackendSelection selection)
    {
        var buffer = new MemoryStream();
        using (var writer = new SnapshotWriter(buffer, leaveOpen: true))
        {
            Write(writer, config, machine, selection, includeMemory: false);
            writer.Complete();
        }

        var file = File.OpenHandle(Path.Combine(Path.GetTempPath(), $"virt-rehearsal-{Guid.NewGuid():N}.state"), FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, FileOptions.DeleteOnClose);
        try
        {
            RandomAccess.Write(file, buffer.GetBuffer().AsSpan(0, (int)buffer.Length), 0);
            using var reader = SnapshotReader.Open(file);
            Restore(reader, machine, selection);
        }
        catch (Exception e) when (e is SnapshotFormatException or InvalidOperationException or ArgumentException or IOException)
        {
            // Only a warm-up: the state that counts is loaded and checked later.
        }
        finally
        {
            file.Dispose();
        }
    }

    /// <summary>The raw bytes of the machine description section, to compare two snapshots' machines.</summary>
    public static byte[] DescriptionBytes(SnapshotReader reader) => reader.ReadState(MachineDescription.SectionName);

    private static MachineDescription Describe(VirtualMachineConfiguration config, AssembledMachine machine, BackendSelection selection) => new()
    {
        Name = config.Name,
        MemorySize = config.MemorySize,
        VcpuCount = config.VcpuCount,
        Backend = selection.Name,
        InterruptController = config.InterruptController,
        LinuxPlatform = config.LinuxPlatform,
        SerialConsole = config.HasSerialConsole,
        DebugExitPort = config.DebugExitPort is ushort port ? port : -1,
        DebugExitWidth = config.DebugExitWidth,
        DebugExitConvention = config.DebugExitConvention,
        AcpiPmTimer = config.HasAcpiPmTimer,
        VirtioDiscovery = config.VirtioDiscovery,
        KernelCommandLine = machine.KernelCommandLine,
        MaskedCpuidFeatures = config.MaskedCpuidFeatures,
        PhysicalAddressBits = config.PhysicalAddressBits,
        OfferedFeatures = MachineDescription.FeatureWords(machine.Partition.SupportedCpuid),
        Devices = SavedDevices(machine),
    };

    private static SavedDevice[] SavedDevices(AssembledMachine machine) =>
    [
        .. machine.VirtioDevices.Select(v => new SavedDevice(v.Kind, true, null, 0, v.Address.Value, v.Size, v.Irq)),
        .. machine.Devices.Select(d => new SavedDevice(d.Name, false, d.Port, d.PortCount, d.MmioAddress?.Value, d.MmioSize, d.Irq)),
    ];

    /// <summary>Reads the machine description and finds the memory section, checking they agree.</summary>
    public static SnapshotSource Open(SnapshotReader reader)
    {
        var description = ReadDescription(reader);
        var memory = reader.GetSection(MemorySection);
        if (memory.Kind != SnapshotSectionKind.Memory || (ulong)memory.Length != description.MemorySize)
        {
            throw new SnapshotFormatException(MemorySection, "length", $"the memory section holds {memory.Length} bytes of a {memory.Kind} section; the machine has {description.MemorySize} bytes of RAM.");
        }

        return new SnapshotSource(reader, description, reader.File, memory.Offset);
    }

    /// <summary>Reads the machine description of a snapshot without memory, whose RAM is in <paramref name="memoryFile"/> from offset 0.</summary>
    public static SnapshotSource Open(SnapshotReader reader, Microsoft.Win32.SafeHandles.SafeFileHandle memoryFile)
    {
        var description = ReadDescription(reader);
        if (reader.Sections.Any(s => s.Name == MemorySection))
        {
            throw new SnapshotFormatException(MemorySection, "presence", "the machine state carries memory of its own, but its memory came separately.");
        }

        long length = RandomAccess.GetLength(memoryFile);
        if ((ulong)length != description.MemorySize)
        {
            throw new SnapshotFormatException(MachineDescription.SectionName, "memory size", $"the machine has {description.MemorySize} bytes of RAM, but {length} bytes were received.");
        }

        return new SnapshotSource(reader, description, memoryFile, 0);
    }

    private static MachineDescription ReadDescription(SnapshotReader reader)
    {
        var data = reader.ReadState(MachineDescription.SectionName);
        var r = new StateReader(data, MachineDescription.SectionName);
        return MachineDescription.Read(ref r, reader.GetSection(MachineDescription.SectionName).Version);
    }

    /// <summary>The configuration the snapshot fixes; the caller's <c>configure</c> adds the host's side.</summary>
    public static VirtualMachineConfiguration BaseConfiguration(MachineDescription d) => new()
    {
        Name = d.Name,
        // The backend the VM was saved on, unless the caller's configure chooses another.
        Backend = d.Backend switch
        {
            "kvm" => BackendKind.Kvm,
            "interpreter" => BackendKind.Interpreter,
            "whp" => BackendKind.Whp,
            _ => BackendKind.Auto,
        },
        MemorySize = d.MemorySize,
        VcpuCount = d.VcpuCount,
        InterruptController = d.InterruptController,
        LinuxPlatform = d.LinuxPlatform,
        VirtioDiscovery = d.VirtioDiscovery,
        MaskedCpuidFeatures = [.. d.MaskedCpuidFeatures],
        PhysicalAddressBits = d.PhysicalAddressBits,
        DebugExitPort = d.DebugExitPort >= 0 ? (ushort)d.DebugExitPort : null,
        DebugExitWidth = d.DebugExitWidth,
        DebugExitConvention = d.DebugExitConvention,
        AcpiPmTimer = d.AcpiPmTimer,
    };

    /// <summary>The caller's configuration with the machine's shape taken from the snapshot whatever the caller set.</summary>
    public static VirtualMachineConfiguration Reconcile(VirtualMachineConfiguration c, MachineDescription d)
    {
        if (!c.Kernel.IsEmpty || c.Images.Count > 0 || c.EntryPoint is not null)
        {
            throw new InvalidOperationException("A restored VM's memory and processor state come from the snapshot: do not give it a kernel, images or an entry point.");
        }

        return c with
        {
            MemorySize = d.MemorySize,
            VcpuCount = d.VcpuCount,
            InterruptController = d.InterruptController,
            LinuxPlatform = d.LinuxPlatform,
            VirtioDiscovery = d.VirtioDiscovery,
            PhysicalAddressBits = d.PhysicalAddressBits,
            DebugExitPort = d.DebugExitPort >= 0 ? (ushort)d.DebugExitPort : null,
            DebugExitWidth = d.DebugExitWidth,
            DebugExitConvention = d.DebugExitConvention,
            AcpiPmTimer = d.AcpiPmTimer,
            // The UART is part of the machine: without an output of the caller's, it writes nowhere.
            SerialOutput = d.SerialConsole && !c.HasSerialConsole ? Stream.Null : c.SerialOutput,
            InstructionBudget = null,
        };
    }

    public static void CheckDevices(MachineDescription d, AssembledMachine machine)
    {
        var now = SavedDevices(machine);
        for (int i = 0; i < Math.Max(now.Length, d.Devices.Count); i++)
        {
            var saved = i < d.Devices.Count ? d.Devices[i] : null;
            var given = i < now.Length ? now[i] : null;
            if (saved != given)
            {
                string was = saved is null ? "nothing" : Describe(saved);
                string isNow = given is null ? "nothing" : Describe(given);
                throw new InvalidOperationException(
                    $"The snapshot's machine had {was} as device {i + 1}, but the restore configured {isNow}. Add the same devices in the same order as the saved VM (disks, networks, your own devices).");
            }
        }

        static string Describe(SavedDevice s) => s.IsVirtio
            ? $"{s.Name} at 0x{s.MmioAddress:x} (IRQ {s.Irq})"
            : $"'{s.Name}'" + (s.Port is { } p ? $" at port 0x{p:x}" : "") + (s.MmioAddress is { } m ? $" at 0x{m:x}" : "") + (s.Irq is { } q ? $" (IRQ {q})" : "");
    }

    public static void CheckCpuid(MachineDescription d, AssembledMachine machine, BackendSelection selection)
    {
        var offeredNow = MachineDescription.FeatureWords(machine.Partition.SupportedCpuid);
        var missing = new List<string>();
        for (int i = 0; i < Math.Min(d.OfferedFeatures.Count, offeredNow.Length); i++)
        {
            uint lacking = d.OfferedFeatures[i] & ~offeredNow[i];
            var (function, index, register) = MachineDescription.FeatureRegisters[i];
            for (int bit = 0; bit < 32; bit++)
            {
                if ((lacking & (1u << bit)) != 0 && !IsNotAFeature(function, register, bit))
                {
                    missing.Add($"leaf 0x{function:x}.{index} {register.ToString().ToUpperInvariant()} bit {bit}");
                }
            }
        }

        if (missing.Count > 0)
        {
            throw new InvalidOperationException(
                $"The snapshot's guest was offered CPUID features that the {selection.Name} backend does not offer: {string.Join(", ", missing)}. "
                + "Restore on a backend that offers them, or build the VM with WithoutCpuidFeature(...) for each before saving it.");
        }
    }

    /// <summary>Leaf bits that describe the state of the machine rather than a capability (OSXSAVE, the hypervisor bit, leaf 7 EDX's hybrid bit).</summary>
    private static bool IsNotAFeature(uint function, CpuidRegister register, int bit) =>
        (function == 1 && register == CpuidRegister.Ecx && bit is 27 or 31) || (function == 7 && register == CpuidRegister.Edx && bit == 15);

    /// <summary>Restores the partition's state, the devices and the vCPUs, and refuses sections nothing takes.</summary>
    public static void Restore(SnapshotReader reader, AssembledMachine machine, BackendSelection selection)
    {
        foreach (var state in machine.Partition.PersistentState)
        {
            reader.RestoreState(state);
        }

        var known = new HashSet<string>(StringComparer.Ordinal) { MachineDescription.SectionName, MemorySection };
        known.UnionWith(machine.Partition.PersistentState.Select(s => s.StateName));
        foreach (var device in machine.PersistentDevices)
        {
            reader.RestoreState(device);
            known.Add(device.StateName);
        }

        for (int i = 0; i < machine.Vcpus.Length; i++)
        {
            string name = VcpuStateCodec.SectionName(i);
            known.Add(name);
            var data = reader.ReadState(name);
            var r = new StateReader(data, name);
            var state = VcpuStateCodec.Read(ref r, reader.GetSection(name).Version);
            try
            {
                machine.Vcpus[i].SetState(state);
            }
            catch (ArgumentException e)
            {
                throw new InvalidOperationException($"vCPU {i}'s saved state does not fit the {selection.Name} backend: {e.Message}", e);
            }
        }

        var unknown = reader.Sections.Where(s => !known.Contains(s.Name)).Select(s => s.Name).ToList();
        if (unknown.Count > 0)
        {
            throw new InvalidOperationException(
                $"The snapshot holds state no part of the restored machine takes: {string.Join(", ", unknown)}. It was saved on another backend or with other devices "
                + $"(it was saved on {ReadSavedBackend(reader)}); restore it with the same backend kind and devices.");
        }
    }

    private static string ReadSavedBackend(SnapshotReader reader) => ReadDescription(reader).Backend;
}
