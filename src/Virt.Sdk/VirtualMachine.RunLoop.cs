using Microsoft.Extensions.Logging;
using Virt.Cpu;

namespace Virt;

public sealed partial class VirtualMachine
{
    private void VcpuThread(int index)
    {
        var vcpu = _vcpus[index];
        bool halted = false;
        bool ioPending = false;
        try
        {
            while (!_stopRequested)
            {
                VcpuExit exit;
                if (_pauseRequested)
                {
                    if (!ioPending)
                    {
                        _share.Leave(index);
                        Park();
                        continue;
                    }

                    // Park between two instructions: the backend finishes the port-I/O or MMIO instruction whose exit was
                    // just served and returns at once (the pause kicked it), so a snapshot taken now does not repeat the
                    // access when it resumes. Should the backend report something else instead, it is served as usual.
                    vcpu.RequestExit();
                    exit = vcpu.Run();
                }
                else
                {
                    if (!_share.Enter(index, this))
                    {
                        continue;
                    }

                    exit = vcpu.Run();
                }

                ioPending = exit.Reason is VcpuExitReason.PortIo or VcpuExitReason.Mmio;
                VirtualMachineDiagnostics.CountExit(exit.Reason);
                switch (exit.Reason)
                {
                    case VcpuExitReason.PortIo:
                        DispatchPortIo(vcpu, exit);
                        break;
                    case VcpuExitReason.Mmio:
                        DispatchMmio(vcpu, exit);
                        break;
                    case VcpuExitReason.Interrupted:
                        break;
                    case VcpuExitReason.Debug when TryHandleDebugExit(index, exit):
                        break;
                    case VcpuExitReason.Halt:
                        // Without an interrupt controller nothing can wake a halted vCPU. With one, the backend
                        // waits for the next interrupt inside Run and reports a halt only when none can come
                        // (interrupts disabled, as after Linux's `halt`). Either way this vCPU is done.
                        halted = true;
                        return;
                    default:
                        RequestStop(VcpuExitStops.ToStop(index, exit));
                        return;
                }
            }
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            VirtualMachineDiagnostics.LogVcpuFailed(_logger, e, _config.Name, index);
            RequestStop(new VirtualMachineExit
            {
                Reason = StopReason.HostError,
                VcpuIndex = index,
                Exception = e,
                Description = $"vCPU {index} failed on the host: {e.Message}",
            });
        }
        finally
        {
            _share.Leave(index);
            ThreadDone(index, halted);
        }
    }

    /// <summary>Whether a vCPU thread waiting for a CPU of the pool should stop waiting: the VM is stopping or pausing.</summary>
    internal bool ShouldLeaveGuest() => _stopRequested || _pauseRequested;

    private void DispatchPortIo(IVirtualCpu vcpu, in VcpuExit exit)
    {
        var data = vcpu.ExitData;
        int size = exit.Size;
        int count = Math.Max(exit.Count, 1);
        if (size <= 0 || data.Length < size * count)
        {
            return;
        }

        for (int i = 0; i < count; i++)
        {
            var slice = data.Slice(i * size, size);
            if (exit.IsWrite)
            {
                _ports.Write(exit.Port, slice);
            }
            else
            {
                _ports.Read(exit.Port, slice);
            }
        }
    }

    private void DispatchMmio(IVirtualCpu vcpu, in VcpuExit exit)
    {
        var data = vcpu.ExitData;
        if (data.Length < exit.Size)
        {
            return;
        }

        var slice = data[..exit.Size];
        if (exit.IsWrite)
        {
            _mmio.Write(exit.Address, slice);
        }
        else
        {
            _mmio.Read(exit.Address, slice);
        }
    }

    private void Park()
    {
        lock (_sync)
        {
            if (!_pauseRequested || _stopRequested)
            {
                return;
            }

            _parkedThreads++;
            CheckAllParked();
        }

        _resume.Wait();
        lock (_sync)
        {
            _parkedThreads--;
        }
    }

    // Under _sync: completes a pending pause when every live vCPU thread is parked.
    private void CheckAllParked()
    {
        if (_pauseRequested && _allParked is { } tcs && _parkedThreads >= _liveThreads)
        {
            tcs.TrySetResult();
        }
    }

    private void ThreadDone(int index, bool halted)
    {
        VirtualMachineExit? finalExit = null;
        lock (_sync)
        {
            _liveThreads--;
            if (halted && _liveThreads > 0)
            {
                VirtualMachineDiagnostics.LogVcpuHalted(_logger, _config.Name, index);
            }

            CheckAllParked();
            if (_liveThreads == 0)
            {
                finalExit = _pendingExit ?? new VirtualMachineExit
                {
                    Reason = StopReason.Halted,
                    VcpuIndex = index,
                    Description = _vcpus.Length == 1 ? "the vCPU halted" : "every vCPU halted",
                };
                _pendingExit = finalExit;
            }
        }

        if (finalExit is not null)
        {
            SetState(VirtualMachineState.Stopped);
            VirtualMachineDiagnostics.LogStop(_logger, _config.Name, finalExit);
            VirtualMachineDiagnostics.RecordStop(this, _vcpus, finalExit);
            _exit.TrySetResult(finalExit);
        }
    }
}
