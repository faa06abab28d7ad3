using System.Buffers.Binary;
using Virt.Memory;

namespace Virt.Cpu.Whp;

/// <summary>
/// The host side of the WHP instruction emulator's callbacks for one vCPU: answers RAM accesses from guest
/// memory, captures port and MMIO writes into the exit data, and defers reads to the host. Pure (no Windows
/// calls), so the two-pass protocol is tested everywhere by playing the emulator's callback sequence.
/// </summary>
/// <remarks>
/// The emulator cannot pause inside a callback, but <see cref="IVirtualCpu.Run"/> must return for the host to
/// service a device. So each I/O or MMIO exit is emulated in up to two passes over the same saved exit context:
/// <list type="number">
/// <item>At the exit, a port or MMIO <em>write</em> is captured and its callback succeeds, so the instruction
/// completes before Run returns the write exit (the guest cannot tell: it is stopped until the next Run). A
/// <em>read</em> is recorded and its callback fails, which stops the emulator before the instruction changes
/// guest state; Run returns the read exit.</item>
/// <item>At the next Run, the emulator runs again over the saved context and the callback answers the recorded
/// read from the exit data the host filled; the instruction completes and the guest continues.</item>
/// </list>
/// </remarks>
internal sealed class EmulationSession
{
    /// <summary>Most bytes one exit carries; a longer REP OUTS fails the emulation.</summary>
    public const int ExitDataCapacity = 16 * 1024;

    /// <summary>Emulator direction value of a write (0 is a read).</summary>
    private const byte DirectionWrite = 1;

    private readonly IGuestMemory _memory;
    private readonly byte[] _exitData = new byte[ExitDataCapacity];
    private int _exitDataLength;
    private Access _pendingRead;
    private Access _replayRead;
    private bool _replayConsumed;
    private int _ioWriteCount;
    private Access _ioWrite;
    private Access _mmioWrite;

    public EmulationSession(IGuestMemory memory) => _memory = memory;

    internal enum AccessKind
    {
        None,
        Port,
        Memory,
    }

    internal readonly record struct Access(AccessKind Kind, ulong Address, int Size);

    /// <summary>The data of the exit last returned (see <see cref="IVirtualCpu.ExitData"/>).</summary>
    public Span<byte> ExitData => _exitData.AsSpan(0, _exitDataLength);

    /// <summary>Whether the last exit was a read the next Run must complete.</summary>
    public bool HasPendingRead => _pendingRead.Kind != AccessKind.None;

    /// <summary>Forgets the previous exit's data (a new guest entry).</summary>
    public void ClearExitData() => _exitDataLength = 0;

    /// <summary>Starts an emulator pass: the first at an exit, or the replay that completes a pending read.</summary>
    public void Begin(bool replay)
    {
        _replayRead = replay ? _pendingRead : default;
        _replayConsumed = false;
        _pendingRead = default;
        _mmioWrite = default;
        _ioWrite = default;
        _ioWriteCount = 0;
        if (!replay)
        {
            _exitDataLength = 0;
        }
    }

    /// <summary>The I/O port callback.</summary>
    public int IoPort(ref WHV_EMULATOR_IO_ACCESS_INFO io)
    {
        int size = io.AccessSize;
        if (size is not (1 or 2 or 4))
        {
            return HResult.E_INVALIDARG;
        }

        Span<byte> value = stackalloc byte[4];
        if (io.Direction == DirectionWrite)
        {
            if (_mmioWrite.Kind != AccessKind.None || _exitDataLength + size > ExitDataCapacity
                || (_ioWriteCount > 0 && _ioWrite != new Access(AccessKind.Port, io.Port, size)))
            {
                return HResult.E_FAIL;
            }

            BinaryPrimitives.WriteUInt32LittleEndian(value, io.Data);
            value[..size].CopyTo(_exitData.AsSpan(_exitDataLength));
            _exitDataLength += size;
            _ioWrite = new Access(AccessKind.Port, io.Port, size);
            _ioWriteCount++;
            return HResult.S_OK;
        }

        if (!_replayConsumed && _replayRead == new Access(AccessKind.Port, io.Port, size))
        {
            value.Clear();
            _exitData.AsSpan(0, size).CopyTo(value);
            io.Data = BinaryPrimitives.ReadUInt32LittleEndian(value);
            _replayConsumed = true;
            return HResult.S_OK;
        }

        return DeferRead(new Access(AccessKind.Port, io.Port, size));
    }

    /// <summary>The memory callback.</summary>
    public unsafe int Memory(ref WHV_EMULATOR_MEMORY_ACCESS_INFO m)
    {
        int size = m.AccessSize;
        if (size is < 1 or > 8)
        {
            return HResult.E_INVALIDARG;
        }

        fixed (byte* p = m.Data)
        {
            // SAFETY: p points at the 8-byte Data array of a struct the caller holds by reference
            // (pinned by the fixed statement); size was checked to be 1-8.
            var data = new Span<byte>(p, size);
            var address = new GuestAddress(m.GpaAddress);
            if (m.Direction != DirectionWrite)
            {
                if (_memory.TryRead(address, data))
                {
                    return HResult.S_OK;
                }

                if (!_replayConsumed && _replayRead == new Access(AccessKind.Memory, m.GpaAddress, size))
                {
                    _exitData.AsSpan(0, size).CopyTo(data);
                    _replayConsumed = true;
                    return HResult.S_OK;
                }

                return DeferRead(new Access(AccessKind.Memory, m.GpaAddress, size));
            }

            if (_memory.TryWrite(address, data))
            {
                return HResult.S_OK;
            }

            // Not RAM (a hole, or ROM): one MMIO write per instruction, captured for the host.
            if (_mmioWrite.Kind != AccessKind.None || _ioWriteCount > 0)
            {
                return HResult.E_FAIL;
            }

            data.CopyTo(_exitData);
            _exitDataLength = size;
            _mmioWrite = new Access(AccessKind.Memory, m.GpaAddress, size);
            return HResult.S_OK;
        }
    }

    /// <summary>
    /// Ends a pass: the exit to return to the host, or <see langword="null"/> when the instruction completed
    /// without needing it. A failed emulation (by status or by HRESULT, which a guest can provoke) is an
    /// <see cref="VcpuExitReason.InternalError"/> exit that stops this guest, never an exception for the host.
    /// </summary>
    /// <param name="hresult">What WHvEmulatorTry*Emulation returned.</param>
    /// <param name="status">The emulator status it wrote.</param>
    /// <param name="saved">The exit context the pass emulated.</param>
    public VcpuExit? Finish(int hresult, WHV_EMULATOR_STATUS status, in WHV_RUN_VP_EXIT_CONTEXT saved)
    {
        if (_pendingRead.Kind != AccessKind.None)
        {
            _exitDataLength = _pendingRead.Size;
            _exitData.AsSpan(0, _exitDataLength).Clear();
            return _pendingRead.Kind == AccessKind.Port
                ? VcpuExit.PortIo((ushort)_pendingRead.Address, _pendingRead.Size, 1, isWrite: false)
                : VcpuExit.Mmio(new GuestAddress(_pendingRead.Address), _pendingRead.Size, isWrite: false);
        }

        if (HResult.Failed(hresult) || !status.Succeeded)
        {
            _exitDataLength = 0;
            string what = saved.ExitReason == WhvRunVpExitReason.X64IoPortAccess ? "I/O port" : "memory";
            string why = HResult.Failed(hresult) ? HResult.Describe(hresult) + ", " : "";
            var fault = new VcpuFault(
                $"the WHP instruction emulator could not complete the {what} instruction ({why}emulator status 0x{status.AsUINT32:x})",
                status.AsUINT32, saved.VpContext.Rip, ExitTranslator.InstructionBytes(saved), null);
            return VcpuExit.Failure(VcpuExitReason.InternalError, fault);
        }

        if (_ioWriteCount > 0)
        {
            return VcpuExit.PortIo((ushort)_ioWrite.Address, _ioWrite.Size, _ioWriteCount, isWrite: true);
        }

        if (_mmioWrite.Kind == AccessKind.Memory)
        {
            return VcpuExit.Mmio(new GuestAddress(_mmioWrite.Address), _mmioWrite.Size, isWrite: true);
        }

        _exitDataLength = 0;
        return null;
    }

    /// <summary>Records a read for the host and fails the callback so that the emulator stops before changing guest state.</summary>
    private int DeferRead(Access access)
    {
        if (_pendingRead.Kind != AccessKind.None || _ioWriteCount > 0 || _mmioWrite.Kind != AccessKind.None)
        {
            return HResult.E_FAIL;
        }

        _pendingRead = access;
        return HResult.E_PENDING;
    }
}
