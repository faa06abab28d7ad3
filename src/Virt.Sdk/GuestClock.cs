using Virt.Platform;

namespace Virt;

/// <summary>
/// The clock a VM's guest reads its time from, for devices that count time (the ACPI PM timer): the interrupt
/// platform's virtual clock when the backend composed one (the interpreter with emulated controllers, whose TSC and
/// timers run on it, deterministic under its virtual clock), else the host's monotonic clock, which is what the TSC
/// follows on KVM and on the interpreter without controllers.
/// </summary>
/// <remarks>
/// It is the <see cref="IInterruptPlatformFactory"/> handed to the backend: it records the platform the backend
/// builds, so the SDK reaches the clock without knowing the backend.
/// </remarks>
internal sealed class GuestClock(IInterruptPlatformFactory platforms) : IInterruptPlatformFactory
{
    private IInterruptPlatform? _platform;

    /// <inheritdoc />
    public IInterruptPlatform Create(InterruptPlatformParameters parameters)
    {
        var platform = platforms.Create(parameters);
        _platform = platform;
        return platform;
    }

    /// <summary>Guest time as a <see cref="TimeProvider"/>'s timestamps. Ask after the partition is created.</summary>
    public TimeProvider Time => _platform is { } p ? new PlatformTime(p.Clock) : TimeProvider.System;

    /// <summary>A platform clock's ticks as timestamps. The backend moves the clock up to the guest's time before it hands a port access to a device.</summary>
    private sealed class PlatformTime(IPlatformClock clock) : TimeProvider
    {
        public override long TimestampFrequency => clock.Frequency;

        public override long GetTimestamp() => clock.Now;
    }
}
