using Microsoft.Extensions.Logging;

namespace Virt.Devices.Virtio;

/// <summary>The virtio log events (ids 4001-4005); devices reach them through <see cref="VirtioDeviceContext"/>.</summary>
internal static partial class VirtioLog
{
    [LoggerMessage(EventId = 4001, Level = LogLevel.Warning, Message = "virtio {DeviceType} device needs reset: {Reason}")]
    public static partial void NeedsReset(ILogger logger, VirtioDeviceType deviceType, string reason);

    [LoggerMessage(EventId = 4002, Level = LogLevel.Debug, Message = "virtio {DeviceType}: ignored {Access} at offset 0x{Offset:x} of {Size} byte(s)")]
    public static partial void IgnoredAccess(ILogger logger, VirtioDeviceType deviceType, string access, ulong offset, int size);

    [LoggerMessage(EventId = 4003, Level = LogLevel.Debug, Message = "virtio {DeviceType}: driver features 0x{Features:x} refused: {Reason}")]
    public static partial void FeaturesRefused(ILogger logger, VirtioDeviceType deviceType, ulong features, string reason);

    [LoggerMessage(EventId = 4004, Level = LogLevel.Warning, Message = "virtio {DeviceType}: host I/O failed: {Reason}")]
    public static partial void HostIoFailed(ILogger logger, VirtioDeviceType deviceType, string reason, Exception exception);

    [LoggerMessage(EventId = 4005, Level = LogLevel.Debug, Message = "virtio {DeviceType}: refused a request: {Reason}")]
    public static partial void RequestRefused(ILogger logger, VirtioDeviceType deviceType, string reason);
}
