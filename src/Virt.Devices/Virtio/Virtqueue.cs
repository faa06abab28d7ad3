using System.Buffers.Binary;
using Virt.Memory;

namespace Virt.Devices.Virtio;

/// <summary>
/// The device side of one split virtqueue (virtio 1.2, section 2.7): take the chains the driver made available with
/// <see cref="TryPop"/>, give them back with <see cref="AddUsed"/>. The transport creates the queues and hands them
/// to the device in <see cref="VirtioDeviceContext.Queues"/>.
/// </summary>
/// <remarks>
/// <para>
/// A virtqueue is hostile input. Every value read from guest memory is validated: descriptor indexes, lengths,
/// flags, chain lengths, loops, indirect tables and buffer addresses. A malformed queue is not an exception: the
/// queue stops (<see cref="IsBroken"/>), puts the device into DEVICE_NEEDS_RESET with the reason logged, and hands
/// out and completes nothing more until the driver resets the device. The queue never touches memory outside the
/// rings validated when the driver enabled it and the buffers validated while parsing a chain.
/// </para>
/// <para>
/// Threading: thread-safe; a device may pop on one thread and complete on another. Calls never block beyond a short
/// lock and never raise interrupts (see <see cref="VirtioDeviceContext.SignalUsed"/>). After a reset, pops return
/// nothing and completions of earlier pops are dropped.
/// </para>
/// </remarks>
public sealed class Virtqueue
{
    /// <summary>Descriptor flag: the chain continues at <c>next</c>.</summary>
    internal const ushort DescFlagNext = 1;
    /// <summary>Descriptor flag: the buffer is device-writable.</summary>
    internal const ushort DescFlagWrite = 2;
    /// <summary>Descriptor flag: the buffer is a table of descriptors.</summary>
    internal const ushort DescFlagIndirect = 4;
    /// <summary>Available-ring flag: the driver does not want interrupts (ignored with EVENT_IDX).</summary>
    internal const ushort AvailFlagNoInterrupt = 1;
    /// <summary>Size of one descriptor in bytes.</summary>
    internal const int DescriptorSize = 16;
    /// <summary>Largest queue size the split format allows.</summary>
    public const int MaxQueueSize = 32768;

    private readonly Lock _sync = new();
    private readonly IGuestMemory _memory;
    private readonly Action<string> _onError;
    private readonly bool _eventIdx;
    private readonly bool _indirect;
    private readonly ulong _desc;
    private readonly ulong _avail;
    private readonly ulong _used;
    private readonly int[] _visited;
    private readonly int[] _visitedIndirect;
    private int _stamp;
    private ushort _nextAvail;
    private ushort _nextUsed;
    private ushort _lastSignalledUsed;
    private bool _broken;
    private string? _pendingError;
    private bool _active;
    private bool _paused;
    private int _inFlight;
    private TaskCompletionSource? _idle;

    internal Virtqueue(int index, ushort size, GuestAddress desc, GuestAddress avail, GuestAddress used, IGuestMemory memory,
        bool eventIdx, bool indirect, bool ready, Action<string> onError)
    {
        Index = index;
        Size = size;
        _desc = desc.Value;
        _avail = avail.Value;
        _used = used.Value;
        _memory = memory;
        _eventIdx = eventIdx;
        _indirect = indirect;
        _onError = onError;
        _active = ready;
        IsReady = ready;
        _visited = ready ? new int[size] : [];
        _visitedIndirect = ready ? new int[size] : [];
    }

    /// <summary>The queue's index within its device.</summary>
    public int Index { get; }

    /// <summary>The number of descriptors (a power of two), as the driver set it.</summary>
    public ushort Size { get; }

    /// <summary>Whether the driver enabled the queue before starting the device.</summary>
    public bool IsReady { get; }

    /// <summary>Whether the queue found a malformed structure and stopped.</summary>
    public bool IsBroken
    {
        get
        {
            lock (_sync)
            {
                return _broken;
            }
        }
    }

    /// <summary>
    /// Checks a queue layout the driver configured: size a power of two no larger than <paramref name="maxSize"/>,
    /// rings aligned and entirely in guest memory. Returns why it is invalid, or <see langword="null"/>.
    /// </summary>
    internal static string? Validate(int index, ushort size, ushort maxSize, GuestAddress desc, GuestAddress avail, GuestAddress used, IGuestMemory memory)
    {
        if (size == 0 || (size & (size - 1)) != 0 || size > maxSize)
        {
            return $"queue {index}: size {size} is not a power of two between 1 and {maxSize}";
        }

        if (!desc.IsAligned(16) || !avail.IsAligned(2) || !used.IsAligned(4))
        {
            return $"queue {index}: ring addresses are misaligned (descriptors {desc}, available {avail}, used {used})";
        }

        if (!InRam(memory, desc.Value, (ulong)size * DescriptorSize))
        {
            return $"queue {index}: descriptor table at {desc} of {size} entries is not inside guest RAM";
        }

        if (!InRam(memory, avail.Value, 6 + (2UL * size)))
        {
            return $"queue {index}: available ring at {avail} is not inside guest RAM";
        }

        if (!InRam(memory, used.Value, 6 + (8UL * size)))
        {
            return $"queue {index}: used ring at {used} is not inside guest RAM";
        }

        return null;
    }

    /// <summary>
    /// Takes the next available descriptor chain, parsed and validated. Returns <see langword="false"/> when the
    /// driver has made nothing new available, when the queue is not ready, reset or broken, or when the chain is
    /// malformed (then the queue breaks, the device is put into the needs-reset state and the reason logged).
    /// Never throws for anything the guest wrote.
    /// </summary>
    /// <remarks>Every popped chain must be completed with <see cref="AddUsed"/> (or given back with <see cref="Rewind"/>);
    /// the driver does not get its buffers back otherwise.</remarks>
    public bool TryPop([System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out DescriptorChain? chain)
    {
        bool popped;
        lock (_sync)
        {
            popped = TryPopLocked(out chain);
        }

        ReportPendingError();
        return popped;
    }

    /// <summary>
    /// A chain object bound to this queue for <see cref="TryPopMany"/> to fill again and again, so that a device that
    /// serves many requests allocates nothing per request. It holds no request until a pop fills it.
    /// </summary>
    public DescriptorChain CreateChain() => new(this, _memory, 0);

    /// <summary>
    /// Takes up to <paramref name="chains"/>.Length available chains in one step (one lock round trip), refilling the
    /// given chain objects (made by <see cref="CreateChain"/> on this queue) in ring order. Returns how many were taken;
    /// fewer than asked means the driver had made no more available (with EVENT_IDX, the device then asked to be
    /// notified of the next one). Validation and failures are those of <see cref="TryPop"/>.
    /// </summary>
    /// <remarks>A chain object may be refilled only after its previous request was completed with
    /// <see cref="AddUsed"/> or <see cref="AddUsedMany"/>,
    /// or given back with <see cref="Rewind"/>.</remarks>
    /// <exception cref="ArgumentException">A chain object belongs to another queue.</exception>
    public int TryPopMany(ReadOnlySpan<DescriptorChain> chains)
    {
        foreach (var chain in chains)
        {
            if (!ReferenceEquals(chain?.Queue, this))
            {
                throw new ArgumentException("Every chain object must come from this queue's CreateChain.", nameof(chains));
            }
        }

        int taken = 0;
        lock (_sync)
        {
            while (taken < chains.Length && TryPopLocked(out _, chains[taken]))
            {
                taken++;
            }
        }

        ReportPendingError();
        return taken;
    }

    /// <summary>
    /// Returns several chains to the driver in one step, in order, each with its count of bytes written (as
    /// <see cref="AddUsed"/> does for one), and decides whether the driver wants an interrupt for
    /// them in the same step. Use <see cref="VirtioDeviceContext.CompleteAndSignal"/>, which raises it.
    /// </summary>
    /// <returns>Whether the driver asked for an interrupt for the buffers used since the last decision.</returns>
    /// <exception cref="ArgumentException">The spans differ in length.</exception>
    internal bool AddUsedAndDecide(ReadOnlySpan<DescriptorChain> chains, ReadOnlySpan<uint> written)
    {
        CheckOneCountPerChain(chains, written);
        bool needed;
        lock (_sync)
        {
            AddUsedManyLocked(chains, written);
            needed = NeedsInterruptLocked();
        }

        ReportPendingError();
        return needed;
    }

    /// <summary>Returns several chains to the driver in one step, in order; see <see cref="AddUsed"/>.</summary>
    /// <exception cref="ArgumentException">The spans differ in length.</exception>
    public void AddUsedMany(ReadOnlySpan<DescriptorChain> chains, ReadOnlySpan<uint> written)
    {
        CheckOneCountPerChain(chains, written);
        lock (_sync)
        {
            AddUsedManyLocked(chains, written);
        }

        ReportPendingError();
    }

    private static void CheckOneCountPerChain(ReadOnlySpan<DescriptorChain> chains, ReadOnlySpan<uint> written)
    {
        if (chains.Length != written.Length)
        {
            throw new ArgumentException("One count of bytes written is needed per chain.", nameof(written));
        }
    }

    private void AddUsedManyLocked(ReadOnlySpan<DescriptorChain> chains, ReadOnlySpan<uint> written)
    {
        for (int i = 0; i < chains.Length; i++)
        {
            AddUsedLocked(chains[i], written[i]);
        }
    }

    private bool TryPopLocked(out DescriptorChain? chain, DescriptorChain? reuse = null)
    {
        chain = null;
        if (!_active || _broken || _paused)
        {
            return false;
        }

        // The available ring and the descriptor table were validated to lie in guest RAM when the driver enabled the
        // queue; resolve each to host memory once for this pop instead of once per field. A ring that straddles two
        // regions (contiguous in guest addresses but not in the host) takes the field-by-field path.
        if (!_memory.TryGetSpan(new GuestAddress(_avail), 4 + (2 * Size), forWrite: false, out Span<byte> avail))
        {
            avail = default;
        }

        if (!TryReadAvailIndex(avail, out ushort availIdx))
        {
            return false;
        }

        if (availIdx == _nextAvail && _eventIdx)
        {
            // Ask to be notified when the driver adds the next buffer, then look again: the driver may have
            // added one between our read and this write.
            if (!TryWriteU16(_used + 4 + (8UL * Size), _nextAvail))
            {
                return false;
            }

            Interlocked.MemoryBarrier();
            if (!TryReadAvailIndex(avail, out availIdx))
            {
                return false;
            }
        }

        ushort pending = (ushort)(availIdx - _nextAvail);
        if (pending == 0)
        {
            return false;
        }

        if (pending > Size)
        {
            Break($"available index {availIdx} is {pending} entries ahead of the device's {_nextAvail}, more than the queue size {Size}");
            return false;
        }

        // The ring entry must be read after the index that published it.
        Interlocked.MemoryBarrier();
        int slot = _nextAvail & (Size - 1);
        ushort head;
        if (!avail.IsEmpty)
        {
            head = BinaryPrimitives.ReadUInt16LittleEndian(avail.Slice(4 + (2 * slot), 2));
        }
        else if (!TryReadU16(_avail + 4 + (2UL * (uint)slot), out head))
        {
            return false;
        }

        if (!_memory.TryGetSpan(new GuestAddress(_desc), DescriptorSize * Size, forWrite: false, out Span<byte> table))
        {
            table = default;
        }

        var parsed = reuse ?? new DescriptorChain(this, _memory, head);
        parsed.Reset(head);
        if (ParseChain(head, parsed, table) is { } error)
        {
            Break(error);
            return false;
        }

        _nextAvail++;
        _inFlight++;
        chain = parsed;
        return true;
    }

    /// <summary>Reads the available ring's index, from <paramref name="avail"/> when the ring is mapped (non-empty).</summary>
    private bool TryReadAvailIndex(ReadOnlySpan<byte> avail, out ushort value)
    {
        if (!avail.IsEmpty)
        {
            value = BinaryPrimitives.ReadUInt16LittleEndian(avail.Slice(2, 2));
            return true;
        }

        return TryReadU16(_avail + 2, out value);
    }

    /// <summary>
    /// Gives the last <paramref name="count"/> popped chains back to the available ring, for a device that took
    /// buffers and then found it cannot use them (e.g. a received frame that does not fit). The next pops return
    /// them again. <paramref name="count"/> must not exceed the chains popped and not yet completed or given back.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="count"/> is negative.</exception>
    public void Rewind(int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        lock (_sync)
        {
            _nextAvail = (ushort)(_nextAvail - count);
            CompleteInFlightLocked(count);
        }
    }

    /// <summary>
    /// Returns a chain to the driver through the used ring with the number of bytes the device wrote into it
    /// (capped at the chain's writable length). Does nothing when the queue was reset or broke since the chain was
    /// popped, or when the chain came from another queue. A used ring that turned out not to be writable breaks the
    /// queue as <see cref="TryPop"/> does. Call <see cref="VirtioDeviceContext.SignalUsed"/> afterwards.
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="chain"/> is null.</exception>
    public void AddUsed(DescriptorChain chain, uint bytesWritten)
    {
        ArgumentNullException.ThrowIfNull(chain);
        lock (_sync)
        {
            AddUsedLocked(chain, bytesWritten);
        }

        ReportPendingError();
    }

    private void AddUsedLocked(DescriptorChain chain, uint bytesWritten)
    {
        {
            if (!_active || _broken || !ReferenceEquals(chain.Queue, this))
            {
                return;
            }

            uint written = (uint)Math.Min(bytesWritten, chain.WritableLength);
            int slot = _nextUsed & (Size - 1);
            // The used ring lies in one region (zero bytes asked for write: the region is writable RAM, nothing marked):
            // write the entry and then the index straight into host memory.
            if (_memory.TryGetSpan(new GuestAddress(_used), 4 + (8 * Size), forWrite: false, out Span<byte> ring)
                && _memory.TryGetSpan(new GuestAddress(_used), 0, forWrite: true, out _))
            {
                Span<byte> slotBytes = ring.Slice(4 + (8 * slot), 8);
                BinaryPrimitives.WriteUInt32LittleEndian(slotBytes, chain.Head);
                BinaryPrimitives.WriteUInt32LittleEndian(slotBytes[4..], written);
                _nextUsed++;
                CompleteInFlightLocked(1);

                // The entry must be visible before the index that publishes it.
                Interlocked.MemoryBarrier();
                BinaryPrimitives.WriteUInt16LittleEndian(ring.Slice(2, 2), _nextUsed);

                // Mark what was written (index through entry) for dirty tracking after writing it, as a copy into guest
                // memory does, so that a pass of a live migration that copies the page in between sees it again.
                _memory.TryGetSpan(new GuestAddress(_used + 2), 2 + 8 + (8 * slot), forWrite: true, out _);
                return;
            }

            ulong entry = _used + 4 + (8UL * (uint)slot);
            Span<byte> element = stackalloc byte[8];
            BinaryPrimitives.WriteUInt32LittleEndian(element, chain.Head);
            BinaryPrimitives.WriteUInt32LittleEndian(element[4..], written);
            if (!_memory.TryWrite(new GuestAddress(entry), element))
            {
                Break($"used ring entry at 0x{entry:x} is not writable guest RAM");
                return;
            }

            _nextUsed++;
            CompleteInFlightLocked(1);

            // The entry must be visible before the index that publishes it.
            Interlocked.MemoryBarrier();
            TryWriteU16(_used + 2, _nextUsed);
        }
    }

    /// <summary>
    /// Whether the driver wants an interrupt for the buffers used since the last call
    /// (used_event with EVENT_IDX, otherwise the NO_INTERRUPT flag; virtio 1.2, section 2.7.10).
    /// </summary>
    internal bool NeedsInterrupt()
    {
        bool needed;
        lock (_sync)
        {
            needed = NeedsInterruptLocked();
        }

        ReportPendingError();
        return needed;
    }

    private bool NeedsInterruptLocked()
    {
        {
            if (!_active || _broken)
            {
                return false;
            }

            ushort old = _lastSignalledUsed;
            ushort now = _nextUsed;
            if (old == now)
            {
                return false;
            }

            _lastSignalledUsed = now;
            Interlocked.MemoryBarrier();
            if (_eventIdx)
            {
                if (!TryReadU16(_avail + 4 + (2UL * Size), out ushort usedEvent))
                {
                    return false;
                }

                return (ushort)(now - usedEvent - 1) < (ushort)(now - old);
            }

            return TryReadU16(_avail, out ushort flags) && (flags & AvailFlagNoInterrupt) == 0;
        }
    }

    /// <summary>Stops the queue: later pops return nothing and completions of earlier pops are dropped.</summary>
    internal void Deactivate()
    {
        lock (_sync)
        {
            _active = false;
            AbandonInFlightLocked();
        }
    }

    /// <summary>Where the device stands in the rings: the next available entry it takes, the next used entry it writes, the used index of its last interrupt decision.</summary>
    internal (ushort NextAvail, ushort NextUsed, ushort LastSignalledUsed) Progress
    {
        get
        {
            lock (_sync)
            {
                return (_nextAvail, _nextUsed, _lastSignalledUsed);
            }
        }
    }

    /// <summary>Chains popped and neither completed nor given back (0 once the queue stopped: those will never complete).</summary>
    internal int InFlight
    {
        get
        {
            lock (_sync)
            {
                return _inFlight;
            }
        }
    }

    /// <summary>Continues from a saved <see cref="Progress"/> instead of the ring's start; only before the device is activated with the queue.</summary>
    internal void RestoreProgress(ushort nextAvail, ushort nextUsed, ushort lastSignalledUsed)
    {
        lock (_sync)
        {
            _nextAvail = nextAvail;
            _nextUsed = nextUsed;
            _lastSignalledUsed = lastSignalledUsed;
        }
    }

    /// <summary>
    /// Stops handing out chains (pops return nothing, completions still land) and returns a task that completes once
    /// every chain already popped is completed or given back, or the queue stopped.
    /// </summary>
    internal Task PauseAsync()
    {
        lock (_sync)
        {
            _paused = true;
            if (_inFlight == 0)
            {
                return Task.CompletedTask;
            }

            _idle ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            return _idle.Task;
        }
    }

    /// <summary>Hands out chains again after <see cref="PauseAsync"/>.</summary>
    internal void Unpause()
    {
        lock (_sync)
        {
            _paused = false;
        }
    }

    /// <summary>The activation ended with an error: chains in flight will never be completed, so nobody waits for them.</summary>
    internal void Abandon()
    {
        lock (_sync)
        {
            AbandonInFlightLocked();
        }
    }

    private void CompleteInFlightLocked(int count)
    {
        // A device that completes a chain twice must not drive the count negative and hide a later pop.
        _inFlight = Math.Max(0, _inFlight - count);
        if (_inFlight == 0 && _idle is { } idle)
        {
            _idle = null;
            idle.TrySetResult();
        }
    }

    private void AbandonInFlightLocked() => CompleteInFlightLocked(_inFlight);

    private void Break(string reason)
    {
        if (_broken)
        {
            return;
        }

        _broken = true;
        _pendingError = $"queue {Index}: {reason}";
        AbandonInFlightLocked();
    }

    // The error sink takes the transport's lock; calling it outside this queue's lock keeps lock order one-way.
    private void ReportPendingError()
    {
        // Set only under the lock, by the breaking call on this thread or another; a stale null read here is
        // reported by the next call, which the breaking thread itself always makes.
        if (Volatile.Read(ref _pendingError) is null)
        {
            return;
        }

        string? error;
        lock (_sync)
        {
            error = _pendingError;
            _pendingError = null;
        }

        if (error is not null)
        {
            _onError(error);
        }
    }

    private static bool InRam(IGuestMemory memory, ulong address, ulong length) =>
        address + length >= address && memory.Contains(new GuestAddress(address), length);

    private bool TryReadU16(ulong address, out ushort value)
    {
        Span<byte> b = stackalloc byte[2];
        if (!_memory.TryRead(new GuestAddress(address), b))
        {
            value = 0;
            Break($"ring field at 0x{address:x} is not readable guest memory");
            return false;
        }

        value = BinaryPrimitives.ReadUInt16LittleEndian(b);
        return true;
    }

    private bool TryWriteU16(ulong address, ushort value)
    {
        Span<byte> b = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(b, value);
        if (!_memory.TryWrite(new GuestAddress(address), b))
        {
            Break($"ring field at 0x{address:x} is not writable guest RAM");
            return false;
        }

        return true;
    }

    private bool TryReadDescriptor(ulong address, out Descriptor descriptor)
    {
        Span<byte> d = stackalloc byte[DescriptorSize];
        if (!_memory.TryRead(new GuestAddress(address), d))
        {
            descriptor = default;
            return false;
        }

        descriptor = Descriptor.From(d);
        return true;
    }

    /// <summary>
    /// One descriptor as the driver laid it out (virtio 1.2, section 2.7.5), copied out of guest memory in a single
    /// 16-byte load so that every check sees the same values however the guest changes the table meanwhile.
    /// </summary>
    [System.Runtime.InteropServices.StructLayout(System.Runtime.InteropServices.LayoutKind.Sequential, Pack = 1)]
    private readonly struct Descriptor
    {
        public readonly ulong Addr;
        public readonly uint Len;
        public readonly ushort Flags;
        public readonly ushort Next;

        private Descriptor(ulong addr, uint len, ushort flags, ushort next)
        {
            Addr = addr;
            Len = len;
            Flags = flags;
            Next = next;
        }

        /// <summary>Decodes the 16 little-endian bytes at the start of <paramref name="bytes"/>.</summary>
        public static Descriptor From(ReadOnlySpan<byte> bytes)
        {
            if (BitConverter.IsLittleEndian)
            {
                return System.Runtime.InteropServices.MemoryMarshal.Read<Descriptor>(bytes);
            }

            return new Descriptor(
                BinaryPrimitives.ReadUInt64LittleEndian(bytes),
                BinaryPrimitives.ReadUInt32LittleEndian(bytes[8..]),
                BinaryPrimitives.ReadUInt16LittleEndian(bytes[12..]),
                BinaryPrimitives.ReadUInt16LittleEndian(bytes[14..]));
        }
    }

    /// <summary>Walks the chain at <paramref name="head"/> into <paramref name="chain"/>; returns why it is malformed, or null.</summary>
    /// <remarks><paramref name="table"/> is the descriptor table in host memory, or empty to read it through guest memory.</remarks>
    private string? ParseChain(ushort head, DescriptorChain chain, ReadOnlySpan<byte> table)
    {
        if (head >= Size)
        {
            return $"head descriptor index {head} is outside the queue of {Size}";
        }

        _stamp++;
        if (_stamp == int.MaxValue)
        {
            Array.Clear(_visited);
            Array.Clear(_visitedIndirect);
            _stamp = 1;
        }

        int total = 0;
        bool sawWritable = false;
        ushort index = head;
        while (true)
        {
            if (_visited[index] == _stamp)
            {
                return $"descriptor chain starting at {head} loops back to descriptor {index}";
            }

            _visited[index] = _stamp;
            Descriptor descriptor;
            if (!table.IsEmpty)
            {
                descriptor = Descriptor.From(table.Slice(index * DescriptorSize, DescriptorSize));
            }
            else if (!TryReadDescriptor(_desc + ((ulong)index * DescriptorSize), out descriptor))
            {
                return $"descriptor {index} is not readable guest memory";
            }

            (ulong addr, uint len, ushort flags, ushort next) = (descriptor.Addr, descriptor.Len, descriptor.Flags, descriptor.Next);

            if ((flags & DescFlagIndirect) != 0)
            {
                if (!_indirect)
                {
                    return $"descriptor {index} is indirect but VIRTIO_F_INDIRECT_DESC was not negotiated";
                }

                if ((flags & DescFlagNext) != 0)
                {
                    return $"descriptor {index} sets both INDIRECT and NEXT";
                }

                return ParseIndirect(head, addr, len, chain, ref total, ref sawWritable);
            }

            if (++total > Size)
            {
                return $"descriptor chain starting at {head} is longer than the queue size {Size}";
            }

            if (AddSegment(chain, index, addr, len, flags, ref sawWritable) is { } segmentError)
            {
                return segmentError;
            }

            if ((flags & DescFlagNext) == 0)
            {
                return null;
            }

            if (next >= Size)
            {
                return $"descriptor {index} points at next descriptor {next}, outside the queue of {Size}";
            }

            index = next;
        }
    }

    private string? ParseIndirect(ushort head, ulong table, uint tableLength, DescriptorChain chain, ref int total, ref bool sawWritable)
    {
        if (tableLength == 0 || tableLength % DescriptorSize != 0)
        {
            return $"indirect table of chain {head} has length {tableLength}, not a non-zero multiple of {DescriptorSize}";
        }

        uint count = tableLength / DescriptorSize;
        if (count > Size)
        {
            return $"indirect table of chain {head} has {count} descriptors, more than the queue size {Size}";
        }

        if (!InRam(_memory, table, tableLength))
        {
            return $"indirect table of chain {head} at 0x{table:x} (+{tableLength}) is not inside guest RAM";
        }

        // Resolve the table to host memory once, as the direct table is; a table that straddles two regions is read
        // descriptor by descriptor. Each descriptor is copied out in one load before any check, so a guest rewriting
        // the table meanwhile cannot change a value between its check and its use.
        if (!_memory.TryGetSpan(new GuestAddress(table), (int)tableLength, forWrite: false, out Span<byte> host))
        {
            host = default;
        }

        uint index = 0;
        while (true)
        {
            if (_visitedIndirect[index] == _stamp)
            {
                return $"indirect table of chain {head} loops back to entry {index}";
            }

            _visitedIndirect[index] = _stamp;
            Descriptor descriptor;
            if (!host.IsEmpty)
            {
                descriptor = Descriptor.From(host.Slice((int)index * DescriptorSize, DescriptorSize));
            }
            else if (!TryReadDescriptor(table + ((ulong)index * DescriptorSize), out descriptor))
            {
                return $"indirect descriptor {index} of chain {head} is not readable guest memory";
            }

            (ulong addr, uint len, ushort flags, ushort next) = (descriptor.Addr, descriptor.Len, descriptor.Flags, descriptor.Next);

            if ((flags & DescFlagIndirect) != 0)
            {
                return $"indirect table of chain {head} contains another indirect descriptor at entry {index}";
            }

            if (++total > Size)
            {
                return $"descriptor chain starting at {head} is longer than the queue size {Size}";
            }

            if (AddSegment(chain, (ushort)index, addr, len, flags, ref sawWritable) is { } segmentError)
            {
                return segmentError;
            }

            if ((flags & DescFlagNext) == 0)
            {
                return null;
            }

            if (next >= count)
            {
                return $"indirect descriptor {index} of chain {head} points at entry {next}, outside its table of {count}";
            }

            index = next;
        }
    }

    private string? AddSegment(DescriptorChain chain, ushort index, ulong addr, uint len, ushort flags, ref bool sawWritable)
    {
        bool writable = (flags & DescFlagWrite) != 0;
        if (writable)
        {
            sawWritable = true;
        }
        else if (sawWritable)
        {
            return $"descriptor {index} is device-readable but follows a device-writable one";
        }

        if (addr + len < addr)
        {
            return $"descriptor {index}: address 0x{addr:x} plus length {len} wraps past 2^64";
        }

        if (len != 0 && !_memory.Contains(new GuestAddress(addr), len))
        {
            return $"descriptor {index}: buffer at 0x{addr:x} (+{len}) is not inside guest RAM";
        }

        chain.Add(new GuestAddress(addr), len, writable);
        return null;
    }
}
