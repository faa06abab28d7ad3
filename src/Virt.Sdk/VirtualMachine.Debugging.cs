using Microsoft.Extensions.Logging;
using Virt.Cpu;
using Virt.Debugging;

namespace Virt;

/// <summary>The VM's side of guest debugging: the attached debugger gets the vCPUs' debug exits and parks every vCPU.</summary>
public sealed partial class VirtualMachine
{
    private GuestDebugger? _debugger;

    internal IVirtualCpu[] Vcpus => _vcpus;

    internal ILogger Logger => _logger;

    /// <summary>Attaches <paramref name="debugger"/>; false when another one is attached.</summary>
    internal bool TryAttachDebugger(GuestDebugger debugger)
    {
        ThrowIfDisposed();
        lock (_sync)
        {
            if (_debugger is not null)
            {
                return false;
            }

            _debugger = debugger;
            return true;
        }
    }

    /// <summary>Detaches <paramref name="debugger"/>: debug exits are the guest's faults again.</summary>
    internal void DetachDebugger(GuestDebugger debugger)
    {
        lock (_sync)
        {
            if (_debugger == debugger)
            {
                _debugger = null;
            }
        }
    }

    /// <summary>On a vCPU thread: hands a debug exit to the attached debugger, which then parks every vCPU.</summary>
    private bool TryHandleDebugExit(int index, in VcpuExit exit)
    {
        GuestDebugger? debugger;
        lock (_sync)
        {
            debugger = _debugger;
        }

        return debugger is not null && debugger.OnDebugExit(index, exit);
    }

    /// <summary>Called by a vCPU thread that reported a debug event: every vCPU parks, as <see cref="PauseAsync"/> would make them.</summary>
    internal void RequestDebugPause()
    {
        lock (_sync)
        {
            if (_pauseRequested || _stopRequested)
            {
                return;
            }

            _resume.Reset();
            _pauseRequested = true;
        }

        KickAll();
    }
}
