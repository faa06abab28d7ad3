using Virt.Memory;
using Virt.Snapshots;

namespace Virt.Devices.Virtio;

/// <summary>Snapshots of the transport: quiescing, saving and restoring the virtio state and the device's own.</summary>
public sealed partial class VirtioMmioTransport
{
    /// <summary>Longest device state nested in the transport's section.</summary>
    private const int MaxDeviceStateLength = 16 << 20;

    /// <summary>Longest device state name.</summary>
    private const int MaxDeviceStateNameLength = 256;

    private const uint LiveStatus = (uint)(VirtioDeviceStatus.DriverOk | VirtioDeviceStatus.DeviceNeedsReset);

    /// <summary>
    /// The snapshot section name, unique within a machine: by convention <c>virtio-mmio@0x</c> and the window's
    /// address (<c>virtio-mmio@0xd0000000</c>). <c>virtio-mmio</c> unless set.
    /// </summary>
    public string StateName { get; init; } = "virtio-mmio";

    /// <summary>The version of the layout <see cref="SaveState"/> writes: 1.</summary>
    public int StateVersion => 1;

    /// <summary>Whether <see cref="QuiesceAsync"/> holds the queues (until <see cref="Resume"/>).</summary>
    public bool IsQuiesced
    {
        get
        {
            lock (_sync)
            {
                return _quiesced;
            }
        }
    }

    /// <summary>
    /// Brings the device to rest for a snapshot: its queues hand out no more chains, and the returned task completes
    /// once every chain the device already took is completed into the used ring, the interrupt the driver asked for
    /// is raised, and the device brought its host side to rest (<see cref="IVirtioDevice.QuiescedAsync"/>: a disk
    /// flushes its image). Notifications arriving meanwhile are held until <see cref="Resume"/>.
    /// </summary>
    /// <remarks>
    /// A device that holds chains indefinitely (waiting for host events) keeps the task waiting until it completes or
    /// gives them back (<see cref="Virtqueue.Rewind"/>). A device that fails meanwhile has its chains abandoned (the
    /// driver must reset it). When cancelled or failed, the transport stays quiesced: call <see cref="Resume"/>.
    /// Quiescing a quiesced transport waits again; one <see cref="Resume"/> ends it.
    /// </remarks>
    /// <param name="cancellationToken">Cancels the wait.</param>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled.</exception>
    public async Task QuiesceAsync(CancellationToken cancellationToken = default)
    {
        VirtioDeviceContext? context;
        Task[] idle;
        lock (_sync)
        {
            _quiesced = true;
            context = _context;
            idle = context is null ? [] : [.. context.Queues.Select(q => q.PauseAsync())];
        }

        if (context is not null)
        {
            await Task.WhenAll(idle).WaitAsync(cancellationToken).ConfigureAwait(false);

            // A device signals after completing; do it here so no interrupt the driver asked for is still owed.
            foreach (var queue in context.Queues)
            {
                if (queue.IsReady)
                {
                    context.SignalUsed(queue);
                }
            }
        }

        await _device.QuiescedAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Ends <see cref="QuiesceAsync"/>: the queues hand out chains again and the device looks at every ready queue, so
    /// buffers the driver made available meanwhile are served. Does nothing when the transport is not quiesced.
    /// </summary>
    public void Resume()
    {
        VirtioDeviceContext? context;
        lock (_sync)
        {
            if (!_quiesced)
            {
                return;
            }

            _quiesced = false;
            context = _context;
            foreach (var queue in context?.Queues ?? [])
            {
                queue.Unpause();
            }

            if ((_status & LiveStatus) != (uint)VirtioDeviceStatus.DriverOk)
            {
                context = null;
            }
        }

        foreach (var queue in context?.Queues ?? [])
        {
            if (queue.IsReady)
            {
                _device.QueueNotified(queue.Index);
            }
        }
    }

    /// <summary>
    /// Writes the transport's state: status, feature selectors and negotiated features, queue selector, interrupt
    /// status, configuration generation, each queue's layout and progress, and the device's state if it implements
    /// <see cref="IPersistentState"/>.
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="writer"/> is null.</exception>
    /// <exception cref="InvalidOperationException">The device is running and not quiesced (<see cref="QuiesceAsync"/>), so a request could be half done.</exception>
    public void SaveState(StateWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        lock (_sync)
        {
            var context = (_status & LiveStatus) == (uint)VirtioDeviceStatus.DriverOk ? _context : null;
            if (context is not null && (!_quiesced || context.Queues.Any(q => q.InFlight != 0)))
            {
                throw new InvalidOperationException(
                    $"The {_device.DeviceType} device behind '{StateName}' is running with requests possibly in flight; await QuiesceAsync before saving its state.");
            }

            uint interruptStatus;
            lock (_irqSync)
            {
                interruptStatus = _interruptStatus;
            }

            writer.WriteUInt32((uint)_device.DeviceType);
            writer.WriteUInt32(_status);
            writer.WriteUInt32(_deviceFeaturesSel);
            writer.WriteUInt32(_driverFeaturesSel);
            writer.WriteUInt64(_driverFeatures);
            writer.WriteUInt32(_queueSel);
            writer.WriteUInt32(interruptStatus);
            writer.WriteUInt32(_configGeneration);
            writer.WriteInt32(_queues.Length);
            for (int i = 0; i < _queues.Length; i++)
            {
                var q = _queues[i];
                writer.WriteUInt32(q.Num);
                writer.WriteBoolean(q.Ready);
                writer.WriteUInt64(q.Desc);
                writer.WriteUInt64(q.Avail);
                writer.WriteUInt64(q.Used);
                var (nextAvail, nextUsed, lastSignalled) = context is not null && q.Ready ? context.Queues[i].Progress : default;
                writer.WriteUInt16(nextAvail);
                writer.WriteUInt16(nextUsed);
                writer.WriteUInt16(lastSignalled);
            }
        }

        // Outside the register lock: the device takes locks of its own.
        if (_device is IPersistentState state)
        {
            var nested = new StateWriter();
            state.SaveState(nested);
            writer.WriteBoolean(true);
            writer.WriteString(state.StateName);
            writer.WriteInt32(state.StateVersion);
            writer.WriteBytes(nested.WrittenMemory.Span);
        }
        else
        {
            writer.WriteBoolean(false);
        }
    }

    /// <summary>
    /// Restores a state <see cref="SaveState"/> wrote into this transport, which the driver has not started (a new
    /// one, or one just reset), over guest memory that already holds the snapshot's contents. Every value is checked
    /// against the device and guest memory as the driver's register writes are; the device's own state is restored,
    /// and if the driver had started the device, the device is activated with its queues where they were (no queue
    /// index goes back to 0), so buffers the driver made available are served. Nothing changes when a check fails.
    /// </summary>
    /// <exception cref="SnapshotFormatException">The version is unknown, the section is truncated, or a value is invalid or does not fit the device; the message names the field.</exception>
    /// <exception cref="InvalidOperationException">The driver already started this transport (its status is not 0).</exception>
    public void RestoreState(ref StateReader reader, int version)
    {
        if (version != StateVersion)
        {
            throw reader.UnsupportedVersion(version, StateVersion);
        }

        lock (_sync)
        {
            if (_status != 0 || _context is not null)
            {
                throw new InvalidOperationException($"The driver already started the device behind '{StateName}'; restore into a new transport.");
            }
        }

        string section = reader.Section;
        uint deviceType = reader.ReadUInt32("device type");
        if (deviceType != (uint)_device.DeviceType)
        {
            throw new SnapshotFormatException(section, "device type", $"is {deviceType}, but the device here is a {_device.DeviceType} ({(uint)_device.DeviceType}); restore with the same devices in the same order.");
        }

        uint status = reader.ReadUInt32("status");
        uint deviceFeaturesSel = reader.ReadUInt32("device features select");
        uint driverFeaturesSel = reader.ReadUInt32("driver features select");
        ulong driverFeatures = reader.ReadUInt64("driver features");
        uint queueSel = reader.ReadUInt32("queue select");
        uint interruptStatus = reader.ReadUInt32("interrupt status");
        uint configGeneration = reader.ReadUInt32("config generation");
        int queueCount = reader.ReadInt32("queue count");
        if (queueCount != _queues.Length)
        {
            throw new SnapshotFormatException(section, "queue count", $"is {queueCount}, but the {_device.DeviceType} device here has {_queues.Length} queues.");
        }

        CheckStatus(section, status, driverFeatures, interruptStatus);
        bool live = (status & LiveStatus) == (uint)VirtioDeviceStatus.DriverOk;
        var queues = new QueueRegisters[queueCount];
        var progress = new QueueProgress[queueCount];
        for (int i = 0; i < queueCount; i++)
        {
            queues[i] = new QueueRegisters
            {
                Num = reader.ReadUInt32($"queue {i} size"),
                Ready = reader.ReadBoolean($"queue {i} ready"),
                Desc = reader.ReadUInt64($"queue {i} descriptor area"),
                Avail = reader.ReadUInt64($"queue {i} driver area"),
                Used = reader.ReadUInt64($"queue {i} device area"),
            };

            // Any index is a position a driver could have brought the queue to; a nonsensical one breaks the queue on
            // the next pop, as the same value written by the guest into its ring would.
            progress[i] = new QueueProgress(reader.ReadUInt16($"queue {i} next available"), reader.ReadUInt16($"queue {i} next used"),
                reader.ReadUInt16($"queue {i} last signalled used"));
            CheckQueue(section, i, queues[i], progress[i], live);
        }

        var deviceState = _device as IPersistentState;
        bool hasDeviceState = reader.ReadBoolean("device state present");
        if (hasDeviceState != (deviceState is not null))
        {
            throw new SnapshotFormatException(section, "device state present", hasDeviceState
                ? $"the snapshot holds state of the {_device.DeviceType} device, but the device here keeps none."
                : $"the snapshot holds no state of the {_device.DeviceType} device, but the device here keeps state ({deviceState!.StateName}).");
        }

        if (deviceState is not null)
        {
            string name = reader.ReadString("device state name", MaxDeviceStateNameLength);
            if (!string.Equals(name, deviceState.StateName, StringComparison.Ordinal))
            {
                throw new SnapshotFormatException(section, "device state name", $"is '{name}', but the device here is '{deviceState.StateName}'.");
            }

            int deviceVersion = reader.ReadInt32("device state version");
            var data = reader.ReadBytes("device state", MaxDeviceStateLength);
            reader.EnsureEnd();
            var nested = new StateReader(data, $"{section}/{name}");
            deviceState.RestoreState(ref nested, deviceVersion);
        }
        else
        {
            reader.EnsureEnd();
        }

        VirtioDeviceContext? context = null;
        lock (_sync)
        {
            _status = status;
            _deviceFeaturesSel = deviceFeaturesSel;
            _driverFeaturesSel = driverFeaturesSel;
            _driverFeatures = driverFeatures;
            _queueSel = queueSel;
            _configGeneration = configGeneration;
            queues.CopyTo(_queues, 0);
            if (live)
            {
                context = CreateContext(progress);
                _context = context;
            }
        }

        lock (_irqSync)
        {
            _interruptStatus = interruptStatus;
            if (interruptStatus != 0)
            {
                _interrupt.Raise();
            }
            else
            {
                _interrupt.Lower();
            }
        }

        if (context is not null)
        {
            try
            {
                _device.Activate(context);
            }
            catch (Exception e) when (e is InvalidOperationException or ArgumentException or IOException or GuestMemoryException)
            {
                NeedsReset($"the device failed to start again after a restore: {e.Message}");
            }
        }
    }

    private void CheckStatus(string section, uint status, ulong driverFeatures, uint interruptStatus)
    {
        const uint validStatus = KnownStatusBits | (uint)VirtioDeviceStatus.DeviceNeedsReset;
        if ((status & ~validStatus) != 0)
        {
            throw new SnapshotFormatException(section, "status", $"is 0x{status:x}; bits 0x{status & ~validStatus:x} do not exist.");
        }

        if ((status & (uint)VirtioDeviceStatus.DriverOk) != 0 && (status & (uint)VirtioDeviceStatus.FeaturesOk) == 0)
        {
            throw new SnapshotFormatException(section, "status", $"is 0x{status:x}: DRIVER_OK without FEATURES_OK, which the transport never accepts.");
        }

        if ((status & (uint)VirtioDeviceStatus.FeaturesOk) != 0)
        {
            if ((driverFeatures & VirtioFeatures.Version1) == 0)
            {
                throw new SnapshotFormatException(section, "driver features", $"0x{driverFeatures:x} lack VIRTIO_F_VERSION_1, yet FEATURES_OK is set.");
            }

            if ((driverFeatures & ~_offeredFeatures) != 0)
            {
                throw new SnapshotFormatException(section, "driver features", $"0x{driverFeatures:x} include 0x{driverFeatures & ~_offeredFeatures:x}, which the {_device.DeviceType} device here does not offer (it offers 0x{_offeredFeatures:x}).");
            }
        }

        const uint validInterrupts = VirtioMmioRegister.InterruptUsedBuffer | VirtioMmioRegister.InterruptConfigChange;
        if ((interruptStatus & ~validInterrupts) != 0)
        {
            throw new SnapshotFormatException(section, "interrupt status", $"is 0x{interruptStatus:x}; only bits 0 and 1 exist.");
        }
    }

    private void CheckQueue(string section, int index, QueueRegisters q, QueueProgress progress, bool live)
    {
        if (q.Ready)
        {
            string? error = q.Num > ushort.MaxValue
                ? $"size {q.Num} is larger than {Virtqueue.MaxQueueSize}"
                : Virtqueue.Validate(index, (ushort)q.Num, _device.QueueMaxSizes[index], new GuestAddress(q.Desc), new GuestAddress(q.Avail), new GuestAddress(q.Used), _memory);
            if (error is not null)
            {
                throw new SnapshotFormatException(section, $"queue {index}", $"is ready, but its layout is one the transport refuses ({error}).");
            }
        }

        if ((!live || !q.Ready) && progress != default)
        {
            throw new SnapshotFormatException(section, $"queue {index} next available", "holds progress for a queue the device was not serving.");
        }
    }
}
