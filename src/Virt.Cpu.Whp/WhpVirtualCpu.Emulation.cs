using System.Runtime.InteropServices;

namespace Virt.Cpu.Whp;

// I/O port and MMIO exits go through the WHP instruction emulator (WinHvEmulation.dll) in up to two
// passes; EmulationSession describes the protocol and keeps its state.
internal sealed unsafe partial class WhpVirtualCpu
{
    private void CreateEmulator()
    {
        // SAFETY: the callback table lies in the native block, which outlives the emulator (see remarks).
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
        _session.Begin(replay);
        var saved = SavedExit;
        var status = default(WHV_EMULATOR_STATUS);
        void* context = (void*)GCHandle.ToIntPtr(_self);

        // SAFETY: saved points into this vCPU's native block, which outlives the call; the emulator reads
        // the contexts and writes status, and calls back (on this thread) with context = this vCPU's GCHandle.
        // A failed HRESULT is not thrown: the callbacks fail on purpose to defer a read, and a guest can make
        // them fail (an over-long REP OUTS); EmulationSession.Finish turns it into the right exit.
        int hr = saved->ExitReason == WhvRunVpExitReason.X64IoPortAccess
            ? Interop.WinHvEmulation.WHvEmulatorTryIoEmulation(_emulator, context, &saved->VpContext, &saved->IoPortAccess, &status)
            : Interop.WinHvEmulation.WHvEmulatorTryMmioEmulation(_emulator, context, &saved->VpContext, &saved->MemoryAccess, &status);
        return _session.Finish(hr, status, *saved) is VcpuExit exit ? WithRegisters(exit) : null;
    }

    // SAFETY: the emulator passes back the context given to WHvEmulatorTry*Emulation, a GCHandle of this
    // vCPU that stays allocated until Dispose, which destroys the emulator first.
    private static WhpVirtualCpu FromContext(void* context) => (WhpVirtualCpu)GCHandle.FromIntPtr((nint)context).Target!;

    // SAFETY (callbacks below): they are entered from native code with pointers the emulator owns for the
    // duration of the call: the access info, register name and value arrays of `count` entries, and the
    // result out-parameters. x64 has one calling convention, so the WINAPI callbacks of WinHvEmulation.h
    // are the platform default. No exception may escape them.

    [UnmanagedCallersOnly]
    private static int OnIoPort(void* context, WHV_EMULATOR_IO_ACCESS_INFO* io)
    {
        try
        {
            return FromContext(context)._session.IoPort(ref *io);
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
            return FromContext(context)._session.Memory(ref *memory);
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
