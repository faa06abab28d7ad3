using Virt.Snapshots;
using static Virt.Cpu.Kvm.Interop.Kvm;

namespace Virt.Cpu.Kvm;

/// <summary>
/// A piece of a KVM partition's own state as a snapshot section: one in-kernel irqchip chip (PIC master, PIC slave,
/// IOAPIC), the in-kernel PIT, or the KVM clock. The kernel's structure travels as is; KVM validates it on restore, and
/// only a KVM partition reads it back (another backend refuses the section by name).
/// </summary>
internal sealed class KvmPartitionState : IPersistentState
{
    private readonly KvmPartition _partition;
    private readonly nuint _get;
    private readonly nuint _set;
    private readonly int _size;
    private readonly uint? _chip;

    private KvmPartitionState(KvmPartition partition, string name, nuint get, nuint set, int size, uint? chip)
    {
        _partition = partition;
        StateName = name;
        _get = get;
        _set = set;
        _size = size;
        _chip = chip;
    }

    /// <summary>The sections of a partition with the in-kernel irqchip and PIT, in restore order (clock first).</summary>
    public static IPersistentState[] For(KvmPartition partition) =>
    [
        new KvmPartitionState(partition, "kvm-clock", KVM_GET_CLOCK, KVM_SET_CLOCK, KvmClockDataSize, null),
        new KvmPartitionState(partition, "kvm-pic-master", KVM_GET_IRQCHIP, KVM_SET_IRQCHIP, KvmIrqchipSize, KVM_IRQCHIP_PIC_MASTER),
        new KvmPartitionState(partition, "kvm-pic-slave", KVM_GET_IRQCHIP, KVM_SET_IRQCHIP, KvmIrqchipSize, KVM_IRQCHIP_PIC_SLAVE),
        new KvmPartitionState(partition, "kvm-ioapic", KVM_GET_IRQCHIP, KVM_SET_IRQCHIP, KvmIrqchipSize, KVM_IRQCHIP_IOAPIC),
        new KvmPartitionState(partition, "kvm-pit", KVM_GET_PIT2, KVM_SET_PIT2, KvmPitState2Size, null),
    ];

    public string StateName { get; }

    public int StateVersion => 1;

    public void SaveState(StateWriter writer)
    {
        var buffer = new byte[_size];
        if (_chip is uint chip)
        {
            BitConverter.TryWriteBytes(buffer, chip);
        }

        KvmIoctls.VmStateIoctl(_partition.VmHandle, _get, buffer, StateName);
        if (StateName == "kvm-clock")
        {
            // Only the guest clock's value is restored; the host fields (realtime, host_tsc, flags) mean nothing elsewhere.
            buffer.AsSpan(8).Clear();
        }
        else if (StateName == "kvm-pit")
        {
            // Each channel's count_load_time is a host timestamp; KVM_SET_PIT2 reloads the counts from now.
            for (int channel = 0; channel < 3; channel++)
            {
                buffer.AsSpan((channel * 24) + 16, 8).Clear();
            }
        }

        writer.WriteBytes(buffer);
    }

    public void RestoreState(ref StateReader reader, int version)
    {
        if (version != StateVersion)
        {
            throw reader.UnsupportedVersion(version, StateVersion);
        }

        var data = reader.ReadBytes("kernel structure", _size);
        reader.EnsureEnd();
        if (data.Length != _size)
        {
            throw new SnapshotFormatException(StateName, "kernel structure", $"has {data.Length} bytes; KVM's has {_size}.");
        }

        if (_chip is uint chip && BitConverter.ToUInt32(data) != chip)
        {
            throw new SnapshotFormatException(StateName, "chip_id", $"is {BitConverter.ToUInt32(data)}, not {chip}.");
        }

        var buffer = data.ToArray();
        try
        {
            KvmIoctls.VmStateIoctl(_partition.VmHandle, _set, buffer, StateName);
        }
        catch (HypervisorException e)
        {
            throw new SnapshotFormatException(StateName, "kernel structure", $"KVM refused it: {e.Message}");
        }
    }
}
