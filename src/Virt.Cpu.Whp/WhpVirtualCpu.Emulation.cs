using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace Virt.Cpu.Whp;

// I/O port and MMIO exits go through the WHP instruction emulator (WinHvEmulation.dll), which decodes
// the instruction and calls back for each port or memory access. The emulator cannot pause inside a
// callback, but IVirtualCpu.Run must return to its caller for the host to service a device. So each
// exit is emulated in up to two passes over the same saved exit context:
//
//   pass 1 (at the exit): a port or MMIO *write* is captured into ExitData and the callback succeeds, so
//     the instruction completes before Run returns the write exit; the guest cannot tell, because the
//     vCPU is stopped until the host calls Run again. A *read* is recorded and the callback fails, which
//     aborts the emulation before the instruction changes any guest state; Run returns the read exit.
//   pass 2 (at the next Run): the emulator runs again on the saved context and the callback answers the
//     recorded read from ExitData, which the host has filled; the instruction completes and the guest runs.
//
// RAM accesses the emulator makes (string I/O, instruction fetch) go straight to guest memory.
internal sealed unsafe partial class WhpVirtualCpu
{
    /// <summary>Most bytes one exit can carry (a REP OUTS beyond this fails the emulation).</summary>
    internal const int ExitDataCapacity = 16 * 1024;

    private readonly byte[] _exitData = new byte[ExitDataCapacity];
    private int _exitDataLength;

    // Emulation state of the current pass.
    private PendingAccess _pendingRead;
    private PendingAccess _replayRead;
    private bool _replayConsumed;
    private int _ioWriteCount;
    private ushort _ioWritePort;
    private int _ioWriteSize;
    private PendingAccess _mmioWrite;

    private enum AccessKind
    {
        None,
        Port,
        Memory,
    }

    private readonly record struct PendingAccess(AccessKind Kind, ulong Address, int Size);

    private void CreateEmulator()
    {
        var callbacks = (WHV_EMULATOR_CALLBACKS*)(_native + CallbacksOffset);
        callbacks->Size = (uint)sizeof(WHV_EMULATOR_CALLBACKS);
        callbacks->WHvEmulatorIoPortCallback = &OnIoPort;
        callbacks->WHvEmulatorMemoryCallback = &OnMemory;
        callbacks->WHvEmulatorGetVirtualProcessorRegisters = &OnGetRegisters;
        callbacks->WHvEmulatorSetVirtualProcessorRegisters = &OnSetRegisters;
        callbacks->WHvEmulatorTranslateGvaPage = &OnTranslateGvaPage;
        HResult.Check(Interop.WinHvEmulation.WHvEmulatorCreateEmulator(callbacks, out _emulator), "WHvEmulatorCreateEmulator");
    }

    /// <summary>Pass 2: completes the read the previous <see cref="Run"/> returned. Returns an exit when the instruction needs the host again.</summary>
    private VcpuExit? CompletePendingRead() => Emulate(replay: true);

    /// <summary>Runs the emulator over <see cref="SavedExit"/>; returns the exit for the host, or null to keep running the guest.</summary>
    private VcpuExit? Emulate(bool replay)
    {
        _replayRead = replay ? _pendingRead : default;
        _replayConsumed = false;
        _pendingRead = default;
        _mmioWrite = default;
        _ioWriteCount = 0;
        if (!replay)
        {
            _exitDataLength = 0;
        }

        var saved = SavedExit;
        bool isIo = saved->ExitReason == WhvRunVpExitReason.X64IoPortAccess;
        var status = default(WHV_EMULATOR_STATUS);
        if (isIo)
        {
            HResult.Check(
                Interop.WinHvEmulation.WHvEmulatorTryIoEmulation(_emulator, (void*)GCHandle.ToIntPtr(_self), &saved->VpContext, &saved->IoPortAccess, &status),
                "WHvEmulatorTryIoEmulation");
        }
        else
        {
            HResult.Check(
                Interop.WinHvEmulation.WHvEmulatorTryMmioEmulation(_emulator, (void*)GCHandle.ToIntPtr(_self), &saved->VpContext, &saved->MemoryAccess, &status),
                "WHvEmulatorTryMmioEmulation");
        }

        if (_pendingRead.Kind != AccessKind.None)
        {
            _exitDataLength = _pendingRead.Size;
            _exitData.AsSpan(0, _exitDataLength).Clear();
            return _pendingRead.Kind == AccessKind.Port
                ? VcpuExit.PortIo((ushort)_pendingRead.Address, _pendingRead.Size, 1, isWrite: false)
                : VcpuExit.Mmio(new GuestAddress(_pendingRead.Address), _pendingRead.Size, isWrite: false);
        }

        if (!status.Succeeded)
        {
            _exitDataLength = 0;
            string what = isIo ? "I/O port" : "memory";
            var fault = new VcpuFault(
                $"the WHP instruction emulator could not complete the {what} instruction (emulator status 0x{status.AsUINT32:x})",
                status.AsUINT32, saved->VpContext.Rip, ExitTranslator.InstructionBytes(*saved), null);
            return WithRegisters(VcpuExit.Failure(VcpuExitReason.InternalError, fault));
        }

        if (_ioWriteCount > 0)
        {
            return VcpuExit.PortIo(_ioWritePort, _ioWriteSize, _ioWriteCount, isWrite: true);
        }

        if (_mmioWrite.Kind == AccessKind.Memory)
        {
            return VcpuExit.Mmio(new GuestAddress(_mmioWrite.Address), _mmioWrite.Size, isWrite: true);
        }

        // Completed without needing the host (a REP with a zero count, or an access that turned out to be RAM).
        _exitDataLength = 0;
        return null;
    }

    private int IoPortAccess(WHV_EMULATOR_IO_ACCESS_INFO* io)
    {
        int size = io->AccessSize;
        if (size is not (1 or 2 or 4))
        {
            return HResult.E_INVALIDARG;
        }

        if (io->Direction == 1)
        {
            if (_mmioWrite.Kind != AccessKind.None || _exitDataLength + size > ExitDataCapacity
                || (_ioWriteCount > 0 && (io->Port != _ioWritePort || size != _ioWriteSize)))
            {
                return HResult.E_FAIL;
            }

            Span<byte> value = stackalloc byte[4];
            BinaryPrimitives.WriteUInt32LittleEndian(value, io->Data);
            value[..size].CopyTo(_exitData.AsSpan(_exitDataLength));
            _exitDataLength += size;
            _ioWritePort = io->Port;
            _ioWriteSize = size;
            _ioWriteCount++;
            return HResult.S_OK;
        }

        if (!_replayConsumed && _replayRead == new PendingAccess(AccessKind.Port, io->Port, size))
        {
            Span<byte> value = stackalloc byte[4];
            value.Clear();
            _exitData.AsSpan(0, size).CopyTo(value);
            io->Data = BinaryPrimitives.ReadUInt32LittleEndian(value);
            _replayConsumed = true;
            return HResult.S_OK;
        }

        return DeferRead(new PendingAccess(AccessKind.Port, io->Port, size));
    }

    private int MemoryAccess(WHV_EMULATOR_MEMORY_ACCESS_INFO* m)
    {
        int size = m->AccessSize;
        if (size is < 1 or > 8)
        {
            return HResult.E_INVALIDARG;
        }

        var data = new Span<byte>(m->Data, size);
        var address = new GuestAddress(m->GpaAddress);
        var memory = _partition.Memory;
        if (m->Direction == 0)
        {
            if (memory.TryRead(address, data))
            {
                return HResult.S_OK;
            }

            if (!_replayConsumed && _replayRead == new PendingAccess(AccessKind.Memory, m->GpaAddress, size))
            {
                _exitData.AsSpan(0, size).CopyTo(data);
                _replayConsumed = true;
                return HResult.S_OK;
            }

            return DeferRead(new PendingAccess(AccessKind.Memory, m->GpaAddress, size));
        }

        if (memory.TryWrite(address, data))
        {
            return HResult.S_OK;
        }

        // Not RAM (a hole or ROM): one MMIO write per instruction, captured for the host.
        if (_mmioWrite.Kind != AccessKind.None || _ioWriteCount > 0)
        {
            return HResult.E_FAIL;
        }

        data.CopyTo(_exitData);
        _exitDataLength = size;
        _mmioWrite = new PendingAccess(AccessKind.Memory, m->GpaAddress, size);
        return HResult.S_OK;
    }

    /// <summary>Records a read for the host and fails the callback so the emulator stops before changing guest state.</summary>
    private int DeferRead(PendingAccess access)
    {
        if (_pendingRead.Kind != AccessKind.None || _ioWriteCount > 0 || _mmioWrite.Kind != AccessKind.None)
        {
            return HResult.E_FAIL;
        }

        _pendingRead = access;
        return HResult.E_PENDING;
    }

    private static WhpVirtualCpu FromContext(void* context) => (WhpVirtualCpu)GCHandle.FromIntPtr((nint)context).Target!;

    // The callbacks below are entered from native code (x64 has one calling convention, so the WINAPI
    // callbacks of WinHvEmulation.h are the platform default): no exception may escape them.

    [UnmanagedCallersOnly]
    private static int OnIoPort(void* context, WHV_EMULATOR_IO_ACCESS_INFO* io)
    {
        try
        {
            return FromContext(context).IoPortAccess(io);
        }
        catch (Exception)
        {
            return HResult.E_FAIL;
        }
    }

    [UnmanagedCallersOnly]
    private static int OnMemory(void* context, WHV_EMULATOR_MEMORY_ACCESS_INFO* memory)
    {
        try
        {
            return FromContext(context).MemoryAccess(memory);
        }
        catch (Exception)
        {
            return HResult.E_FAIL;
        }
    }

    [UnmanagedCallersOnly]
    private static int OnGetRegisters(void* context, WhvRegisterName* names, uint count, WHV_REGISTER_VALUE* values)
    {
        try
        {
            var v = FromContext(context);
            return Interop.WinHvPlatform.WHvGetVirtualProcessorRegisters(v._handle, v._vp, names, count, values);
        }
        catch (Exception)
        {
            return HResult.E_FAIL;
        }
    }

    [UnmanagedCallersOnly]
    private static int OnSetRegisters(void* context, WhvRegisterName* names, uint count, WHV_REGISTER_VALUE* values)
    {
        try
        {
            var v = FromContext(context);
            return Interop.WinHvPlatform.WHvSetVirtualProcessorRegisters(v._handle, v._vp, names, count, values);
        }
        catch (Exception)
        {
            return HResult.E_FAIL;
        }
    }

    [UnmanagedCallersOnly]
    private static int OnTranslateGvaPage(void* context, ulong gva, WhvTranslateGvaFlags flags, WhvTranslateGvaResultCode* result, ulong* gpa)
    {
        try
        {
            var v = FromContext(context);
            var translation = default(WHV_TRANSLATE_GVA_RESULT);
            int hr = Interop.WinHvPlatform.WHvTranslateGva(v._handle, v._vp, gva, flags, &translation, gpa);
            *result = translation.ResultCode;
            return hr;
        }
        catch (Exception)
        {
            return HResult.E_FAIL;
        }
    }
}
