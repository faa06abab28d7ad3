using System.Buffers.Binary;
using System.Globalization;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Virt.Memory;
using Virt.Snapshots;

namespace Virt.Devices.Virtio;

/// <summary>
/// The virtio-mmio transport, version 2 (virtio 1.2, section 4.2): puts an <see cref="IVirtioDevice"/> in a
/// <see cref="WindowSize"/>-byte MMIO window with one interrupt line. Linux finds it through a
/// <c>virtio_mmio.device=</c> kernel parameter (<see cref="KernelCommandLineFragment"/>).
/// </summary>
/// <remarks>
/// <para>
/// Every register access from the guest is validated. A driver that breaks the protocol or a queue puts the
/// device into DEVICE_NEEDS_RESET (logged with the reason); nothing a guest writes makes these methods throw.
/// </para>
/// <para>
/// Snapshots: <see cref="QuiesceAsync"/> brings the device to a point where no request is half done,
/// <see cref="SaveState"/> writes the transport's registers, each queue's progress and the device's own state (if it
/// implements <see cref="IPersistentState"/>), and <see cref="RestoreState"/> puts them back into a new transport and
/// re-activates the device where it stopped, so the guest's driver carries on as if nothing happened. The snapshot is
/// validated like guest input: a value no guest could have produced ends in <see cref="SnapshotFormatException"/>.
/// </para>
/// </remarks>
public sealed partial class VirtioMmioTransport : IMmioDevice, IPersistentState
{
    /// <summary>Size of the MMIO window in bytes: registers up to 0x100, configuration space after.</summary>
    public const ulong WindowSize = 0x200;

    private const uint KnownStatusBits = (uint)(VirtioDeviceStatus.Acknowledge | VirtioDeviceStatus.Driver | VirtioDeviceStatus.DriverOk
        | VirtioDeviceStatus.FeaturesOk | VirtioDeviceStatus.Failed);

    private readonly Lock _sync = new();
    private readonly Lock _irqSync = new();
    private readonly IVirtioDevice _device;
    private readonly IGuestMemory _memory;
    private readonly IInterruptLine _interrupt;
    private readonly ILogger _logger;
    private readonly ulong _offeredFeatures;
    private readonly QueueRegisters[] _queues;
    private uint _status;
    private uint _deviceFeaturesSel;
    private uint _driverFeaturesSel;
    private ulong _driverFeatures;
    private uint _queueSel;
    private uint _interruptStatus;
    private uint _configGeneration;
    private VirtioDeviceContext? _context;
    private bool _quiesced;

    /// <summary>Puts <paramref name="device"/> behind a virtio-mmio register window.</summary>
    /// <param name="device">The device.</param>
    /// <param name="memory">Guest memory the device's queues live in.</param>
    /// <param name="interrupt">The device's interrupt line (level: raised while interrupt status is non-zero).</param>
    /// <param name="logger">Where protocol errors are logged; none by default.</param>
    public VirtioMmioTransport(IVirtioDevice device, IGuestMemory memory, IInterruptLine interrupt, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(memory);
        ArgumentNullException.ThrowIfNull(interrupt);
        var maxSizes = device.QueueMaxSizes;
        if (device.ConfigSize < 0 || device.ConfigSize > (int)WindowSize - VirtioMmioRegister.Config)
        {
            throw new ArgumentException($"The device's configuration space of {device.ConfigSize} bytes does not fit the MMIO window.", nameof(device));
        }

        foreach (ushort max in maxSizes)
        {
            if (max == 0 || (max & (max - 1)) != 0 || max > Virtqueue.MaxQueueSize)
            {
                throw new ArgumentException($"Queue size {max} is not a power of two between 1 and {Virtqueue.MaxQueueSize}.", nameof(device));
            }
        }

        _device = device;
        _memory = memory;
        _interrupt = interrupt;
        _logger = logger ?? NullLogger.Instance;
        _offeredFeatures = device.DeviceFeatures | VirtioFeatures.Transport;
        _queues = new QueueRegisters[maxSizes.Count];
    }

    /// <summary>The device behind the transport.</summary>
    public IVirtioDevice Device => _device;

    /// <summary>The current device status as the driver reads it.</summary>
    public VirtioDeviceStatus Status
    {
        get
        {
            lock (_sync)
            {
                return (VirtioDeviceStatus)_status;
            }
        }
    }

    /// <summary>Pending interrupt causes (bit 0 used buffer, bit 1 configuration change).</summary>
    public uint InterruptStatus
    {
        get
        {
            lock (_irqSync)
            {
                return _interruptStatus;
            }
        }
    }

    /// <summary>
    /// The Linux kernel parameter that announces a device at <paramref name="address"/> with interrupt
    /// <paramref name="irq"/>: <c>virtio_mmio.device=512@0xd0000000:5</c>.
    /// </summary>
    public static string KernelCommandLineFragment(GuestAddress address, uint irq) =>
        string.Create(CultureInfo.InvariantCulture, $"virtio_mmio.device={WindowSize}@0x{address.Value:x}:{irq}");

    /// <inheritdoc />
    public void Read(ulong offset, Span<byte> data)
    {
        data.Clear();
        if (offset >= WindowSize || data.Length == 0 || (ulong)data.Length > WindowSize - offset)
        {
            return;
        }

        if (offset >= VirtioMmioRegister.Config)
        {
            int configOffset = (int)offset - VirtioMmioRegister.Config;
            if (configOffset + data.Length <= _device.ConfigSize)
            {
                _device.ReadConfig(configOffset, data);
            }

            return;
        }

        if (data.Length != 4 || (offset & 3) != 0)
        {
            VirtioLog.IgnoredAccess(_logger, _device.DeviceType, "read", offset, data.Length);
            return;
        }

        BinaryPrimitives.WriteUInt32LittleEndian(data, ReadRegister((int)offset));
    }

    /// <inheritdoc />
    public void Write(ulong offset, ReadOnlySpan<byte> data)
    {
        if (offset >= WindowSize || data.Length == 0 || (ulong)data.Length > WindowSize - offset)
        {
            return;
        }

        if (offset >= VirtioMmioRegister.Config)
        {
            int configOffset = (int)offset - VirtioMmioRegister.Config;
            if (configOffset + data.Length <= _device.ConfigSize)
            {
                _device.WriteConfig(configOffset, data);
            }

            return;
        }

        if (data.Length != 4 || (offset & 3) != 0)
        {
            VirtioLog.IgnoredAccess(_logger, _device.DeviceType, "write", offset, data.Length);
            return;
        }

        WriteRegister((int)offset, BinaryPrimitives.ReadUInt32LittleEndian(data));
    }

    private uint ReadRegister(int offset)
    {
        switch (offset)
        {
            case VirtioMmioRegister.MagicValue:
                return VirtioMmioRegister.MagicValueContents;
            case VirtioMmioRegister.Version:
                return VirtioMmioRegister.VersionContents;
            case VirtioMmioRegister.DeviceId:
                return (uint)_device.DeviceType;
            case VirtioMmioRegister.VendorId:
                return VirtioMmioRegister.VendorIdContents;
            case VirtioMmioRegister.InterruptStatus:
                return InterruptStatus;
            case VirtioMmioRegister.ShmLenLow:
            case VirtioMmioRegister.ShmLenHigh:
                // All ones: no shared-memory region with the selected id exists.
                return uint.MaxValue;
            case VirtioMmioRegister.ShmBaseLow:
            case VirtioMmioRegister.ShmBaseHigh:
                return uint.MaxValue;
        }

        lock (_sync)
        {
            return offset switch
            {
                VirtioMmioRegister.DeviceFeatures => _deviceFeaturesSel switch
                {
                    0 => (uint)_offeredFeatures,
                    1 => (uint)(_offeredFeatures >> 32),
                    _ => 0,
                },
                VirtioMmioRegister.QueueNumMax => SelectedQueueExists ? _device.QueueMaxSizes[(int)_queueSel] : 0u,
                VirtioMmioRegister.QueueReady => SelectedQueueExists && _queues[_queueSel].Ready ? 1u : 0u,
                VirtioMmioRegister.Status => _status,
                VirtioMmioRegister.ConfigGeneration => _configGeneration,
                _ => 0,
            };
        }
    }

    private bool SelectedQueueExists => _queueSel < (uint)_queues.Length;

    private void WriteRegister(int offset, uint value)
    {
        switch (offset)
        {
            case VirtioMmioRegister.Status:
                WriteStatus(value);
                return;
            case VirtioMmioRegister.InterruptAck:
                AcknowledgeInterrupt(value);
                return;
            case VirtioMmioRegister.QueueNotify:
                Notify(value);
                return;
        }

        lock (_sync)
        {
            switch (offset)
            {
                case VirtioMmioRegister.DeviceFeaturesSel:
                    _deviceFeaturesSel = value;
                    return;
                case VirtioMmioRegister.DriverFeaturesSel:
                    _driverFeaturesSel = value;
                    return;
                case VirtioMmioRegister.DriverFeatures:
                    // Features are fixed once FEATURES_OK is set (virtio 1.2, section 3.1.1).
                    if ((_status & (uint)VirtioDeviceStatus.FeaturesOk) == 0 && _driverFeaturesSel < 2)
                    {
                        int shift = (int)_driverFeaturesSel * 32;
                        _driverFeatures = (_driverFeatures & ~(0xffff_ffffUL << shift)) | ((ulong)value << shift);
                    }

                    return;
                case VirtioMmioRegister.QueueSel:
                    _queueSel = value;
                    return;
                case VirtioMmioRegister.ShmSel:
                    return;
            }

            if (!SelectedQueueExists || (_status & (uint)VirtioDeviceStatus.DriverOk) != 0)
            {
                return;
            }

            ref var q = ref _queues[_queueSel];
            if (offset == VirtioMmioRegister.QueueReady)
            {
                SetQueueReady(ref q, value == 1);
                return;
            }

            // A queue's layout may change only while it is not ready (virtio 1.2, section 4.2.3.2).
            if (q.Ready)
            {
                return;
            }

            switch (offset)
            {
                case VirtioMmioRegister.QueueNum:
                    q.Num = value;
                    break;
                case VirtioMmioRegister.QueueDescLow:
                    q.Desc = (q.Desc & 0xffff_ffff_0000_0000UL) | value;
                    break;
                case VirtioMmioRegister.QueueDescHigh:
                    q.Desc = (q.Desc & 0xffff_ffffUL) | ((ulong)value << 32);
                    break;
                case VirtioMmioRegister.QueueDriverLow:
                    q.Avail = (q.Avail & 0xffff_ffff_0000_0000UL) | value;
                    break;
                case VirtioMmioRegister.QueueDriverHigh:
                    q.Avail = (q.Avail & 0xffff_ffffUL) | ((ulong)value << 32);
                    break;
                case VirtioMmioRegister.QueueDeviceLow:
                    q.Used = (q.Used & 0xffff_ffff_0000_0000UL) | value;
                    break;
                case VirtioMmioRegister.QueueDeviceHigh:
                    q.Used = (q.Used & 0xffff_ffffUL) | ((ulong)value << 32);
                    break;
            }
        }
    }

    private void SetQueueReady(ref QueueRegisters q, bool ready)
    {
        if (!ready)
        {
            q.Ready = false;
            return;
        }

        int index = (int)_queueSel;
        string? error = q.Num > ushort.MaxValue
            ? $"queue {index}: size {q.Num} is larger than {Virtqueue.MaxQueueSize}"
            : Virtqueue.Validate(index, (ushort)q.Num, _device.QueueMaxSizes[index], new GuestAddress(q.Desc), new GuestAddress(q.Avail), new GuestAddress(q.Used), _memory);
        if (error is not null)
        {
            NeedsResetLocked(error);
            return;
        }

        q.Ready = true;
    }

    private void WriteStatus(uint value)
    {
        if (value == 0)
        {
            Reset();
            return;
        }

        VirtioDeviceContext? activated = null;
        lock (_sync)
        {
            uint current = _status & KnownStatusBits;
            uint requested = value & KnownStatusBits;

            // Bits are only ever added; clearing one takes a reset (virtio 1.2, section 2.1.1).
            if ((current & ~requested) != 0)
            {
                VirtioLog.IgnoredAccess(_logger, _device.DeviceType, $"status write 0x{value:x} clearing bits of 0x{current:x}", VirtioMmioRegister.Status, 4);
                return;
            }

            uint added = requested & ~current;
            if ((added & (uint)VirtioDeviceStatus.FeaturesOk) != 0)
            {
                if (CheckFeatures() is { } refusal)
                {
                    VirtioLog.FeaturesRefused(_logger, _device.DeviceType, _driverFeatures, refusal);
                    added &= ~(uint)(VirtioDeviceStatus.FeaturesOk | VirtioDeviceStatus.DriverOk);
                }
            }

            if ((added & (uint)VirtioDeviceStatus.DriverOk) != 0)
            {
                if (((current | added) & (uint)VirtioDeviceStatus.FeaturesOk) == 0)
                {
                    NeedsResetLocked("the driver set DRIVER_OK before FEATURES_OK");
                    return;
                }

                if ((_status & (uint)VirtioDeviceStatus.DeviceNeedsReset) == 0)
                {
                    activated = CreateContext();
                }
            }

            _status |= added;
            if (activated is not null)
            {
                _context = activated;
            }
        }

        if (activated is not null)
        {
            try
            {
                _device.Activate(activated);
            }
            catch (Exception e) when (e is InvalidOperationException or ArgumentException or IOException or GuestMemoryException)
            {
                NeedsReset($"the device failed to start: {e.Message}");
            }
        }
    }

    private string? CheckFeatures()
    {
        if ((_driverFeatures & VirtioFeatures.Version1) == 0)
        {
            return "VIRTIO_F_VERSION_1 is required (legacy drivers are not supported)";
        }

        if ((_driverFeatures & ~_offeredFeatures) != 0)
        {
            return $"the driver accepted features 0x{_driverFeatures & ~_offeredFeatures:x} that were not offered";
        }

        return null;
    }

    private VirtioDeviceContext CreateContext(QueueProgress[]? progress = null)
    {
        var queues = new Virtqueue[_queues.Length];
        bool eventIdx = (_driverFeatures & VirtioFeatures.RingEventIdx) != 0;
        bool indirect = (_driverFeatures & VirtioFeatures.RingIndirectDesc) != 0;
        for (int i = 0; i < queues.Length; i++)
        {
            var q = _queues[i];
            queues[i] = new Virtqueue(i, q.Ready ? (ushort)q.Num : (ushort)0, new GuestAddress(q.Desc), new GuestAddress(q.Avail),
                new GuestAddress(q.Used), _memory, eventIdx, indirect, q.Ready, NeedsReset);
            if (progress is not null)
            {
                queues[i].RestoreProgress(progress[i].NextAvail, progress[i].NextUsed, progress[i].LastSignalledUsed);
            }

            if (_quiesced)
            {
                // Nothing was popped yet, so the pause holds at once.
                _ = queues[i].PauseAsync();
            }
        }

        return new VirtioDeviceContext(this, queues, _memory, _driverFeatures, _logger);
    }

    private void Notify(uint value)
    {
        // No lock: the status is one word written under the lock, and a notification racing a reset or an error is
        // harmless either way (the device's queues of a stopped activation hand out nothing).
        const uint live = (uint)(VirtioDeviceStatus.DriverOk | VirtioDeviceStatus.DeviceNeedsReset);
        if ((Volatile.Read(ref _status) & live) != (uint)VirtioDeviceStatus.DriverOk || (value & 0xffff) >= (uint)_queues.Length)
        {
            return;
        }

        _device.QueueNotified((int)(value & 0xffff));
    }

    private void Reset()
    {
        VirtioDeviceContext? old;
        lock (_sync)
        {
            old = _context;
            _context = null;
            _status = 0;
            _deviceFeaturesSel = 0;
            _driverFeaturesSel = 0;
            _driverFeatures = 0;
            _queueSel = 0;
            Array.Clear(_queues);
        }

        old?.Stop();
        _device.Reset();
        lock (_irqSync)
        {
            _interruptStatus = 0;
            _interrupt.Lower();
        }
    }

    private void AcknowledgeInterrupt(uint value)
    {
        lock (_irqSync)
        {
            _interruptStatus &= ~value;
            if (_interruptStatus == 0)
            {
                _interrupt.Lower();
            }
        }
    }

    internal void RaiseInterrupt(uint cause)
    {
        lock (_irqSync)
        {
            _interruptStatus |= cause;
            _interrupt.Raise();
        }
    }

    internal void ConfigChanged()
    {
        lock (_sync)
        {
            _configGeneration++;
            if ((_status & (uint)VirtioDeviceStatus.DriverOk) == 0)
            {
                return;
            }
        }

        RaiseInterrupt(VirtioMmioRegister.InterruptConfigChange);
    }

    internal void NeedsReset(string reason)
    {
        VirtioDeviceContext? context;
        lock (_sync)
        {
            context = NeedsResetLocked(reason) ? _context : null;
        }

        // Cancelling runs continuations of in-flight I/O; do it outside the register lock.
        context?.StopAfterError();
    }

    /// <summary>Sets DEVICE_NEEDS_RESET; returns false when it was already set.</summary>
    private bool NeedsResetLocked(string reason)
    {
        if ((_status & (uint)VirtioDeviceStatus.DeviceNeedsReset) != 0)
        {
            return false;
        }

        VirtioLog.NeedsReset(_logger, _device.DeviceType, reason);
        _status |= (uint)VirtioDeviceStatus.DeviceNeedsReset;
        if ((_status & (uint)VirtioDeviceStatus.DriverOk) != 0)
        {
            RaiseInterrupt(VirtioMmioRegister.InterruptConfigChange);
        }

        return true;
    }

    private record struct QueueProgress(ushort NextAvail, ushort NextUsed, ushort LastSignalledUsed);

    private struct QueueRegisters
    {
        public uint Num;
        public bool Ready;
        public ulong Desc;
        public ulong Avail;
        public ulong Used;
    }
}
