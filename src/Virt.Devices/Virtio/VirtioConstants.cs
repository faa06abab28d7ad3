namespace Virt.Devices.Virtio;

/// <summary>Virtio device types (virtio 1.2, section 5): the value of the transport's DeviceID register.</summary>
public enum VirtioDeviceType : uint
{
    /// <summary>Network card (virtio-net).</summary>
    Network = 1,

    /// <summary>Block device (virtio-blk).</summary>
    Block = 2,

    /// <summary>Console (virtio-console).</summary>
    Console = 3,

    /// <summary>Entropy source (virtio-rng).</summary>
    Entropy = 4,

    /// <summary>Memory balloon (virtio-balloon).</summary>
    Balloon = 5,

    /// <summary>File system device (virtio-fs, virtio 1.2 section 5.11).</summary>
    FileSystem = 26,
}

/// <summary>Device-independent feature bits (virtio 1.2, section 6) that the transport negotiates itself.</summary>
public static class VirtioFeatures
{
    /// <summary>Bit 28: descriptors may point at indirect descriptor tables.</summary>
    public const ulong RingIndirectDesc = 1UL << 28;

    /// <summary>Bit 29: used_event / avail_event notification suppression.</summary>
    public const ulong RingEventIdx = 1UL << 29;

    /// <summary>Bit 32: the device follows virtio 1.x (no legacy interface). Required by this transport.</summary>
    public const ulong Version1 = 1UL << 32;

    /// <summary>The transport features every device gets.</summary>
    internal const ulong Transport = RingIndirectDesc | RingEventIdx | Version1;
}

/// <summary>Device status bits (virtio 1.2, section 2.1).</summary>
[Flags]
public enum VirtioDeviceStatus : uint
{
    /// <summary>Nothing set: the device is reset.</summary>
    None = 0,

    /// <summary>The guest noticed the device.</summary>
    Acknowledge = 1,

    /// <summary>The guest knows how to drive the device.</summary>
    Driver = 2,

    /// <summary>The driver is set up and the device is live.</summary>
    DriverOk = 4,

    /// <summary>Feature negotiation is complete.</summary>
    FeaturesOk = 8,

    /// <summary>The device hit an error it cannot recover from without a reset.</summary>
    DeviceNeedsReset = 0x40,

    /// <summary>The driver gave up on the device.</summary>
    Failed = 0x80,
}

/// <summary>virtio-mmio register offsets (virtio 1.2, section 4.2.2), all 32 bits wide.</summary>
internal static class VirtioMmioRegister
{
    /// <summary>R: 0x74726976 ("virt").</summary>
    public const int MagicValue = 0x000;
    /// <summary>R: transport version, 2 for the non-legacy interface.</summary>
    public const int Version = 0x004;
    /// <summary>R: virtio device type; 0 means no device.</summary>
    public const int DeviceId = 0x008;
    /// <summary>R: subsystem vendor id.</summary>
    public const int VendorId = 0x00c;
    /// <summary>R: 32 bits of the device features, selected by DeviceFeaturesSel.</summary>
    public const int DeviceFeatures = 0x010;
    /// <summary>W: which 32-bit word DeviceFeatures shows.</summary>
    public const int DeviceFeaturesSel = 0x014;
    /// <summary>W: 32 bits of the driver's accepted features, selected by DriverFeaturesSel.</summary>
    public const int DriverFeatures = 0x020;
    /// <summary>W: which 32-bit word DriverFeatures sets.</summary>
    public const int DriverFeaturesSel = 0x024;
    /// <summary>W: which queue the Queue* registers address.</summary>
    public const int QueueSel = 0x030;
    /// <summary>R: largest queue size the device accepts for the selected queue; 0 if the queue does not exist.</summary>
    public const int QueueNumMax = 0x034;
    /// <summary>W: queue size the driver chose.</summary>
    public const int QueueNum = 0x038;
    /// <summary>RW: 1 once the driver has set the queue up.</summary>
    public const int QueueReady = 0x044;
    /// <summary>W: the driver has new buffers in the queue whose index is written.</summary>
    public const int QueueNotify = 0x050;
    /// <summary>R: pending interrupt causes (bit 0 used buffer, bit 1 configuration change).</summary>
    public const int InterruptStatus = 0x060;
    /// <summary>W: acknowledges the interrupt causes written.</summary>
    public const int InterruptAck = 0x064;
    /// <summary>RW: device status; writing 0 resets the device.</summary>
    public const int Status = 0x070;
    /// <summary>W: descriptor table address, low 32 bits.</summary>
    public const int QueueDescLow = 0x080;
    /// <summary>W: descriptor table address, high 32 bits.</summary>
    public const int QueueDescHigh = 0x084;
    /// <summary>W: available (driver) ring address, low 32 bits.</summary>
    public const int QueueDriverLow = 0x090;
    /// <summary>W: available (driver) ring address, high 32 bits.</summary>
    public const int QueueDriverHigh = 0x094;
    /// <summary>W: used (device) ring address, low 32 bits.</summary>
    public const int QueueDeviceLow = 0x0a0;
    /// <summary>W: used (device) ring address, high 32 bits.</summary>
    public const int QueueDeviceHigh = 0x0a4;
    /// <summary>W: selects a shared-memory region.</summary>
    public const int ShmSel = 0x0ac;
    /// <summary>R: shared-memory region length, low; all ones means the region does not exist.</summary>
    public const int ShmLenLow = 0x0b0;
    /// <summary>R: shared-memory region length, high.</summary>
    public const int ShmLenHigh = 0x0b4;
    /// <summary>R: shared-memory region base, low.</summary>
    public const int ShmBaseLow = 0x0b8;
    /// <summary>R: shared-memory region base, high.</summary>
    public const int ShmBaseHigh = 0x0bc;
    /// <summary>R: changes whenever the device changes its configuration space.</summary>
    public const int ConfigGeneration = 0x0fc;
    /// <summary>RW: start of the device-specific configuration space.</summary>
    public const int Config = 0x100;

    /// <summary>"virt" in little-endian.</summary>
    public const uint MagicValueContents = 0x74726976;
    /// <summary>The non-legacy virtio-mmio interface.</summary>
    public const uint VersionContents = 2;
    /// <summary>Vendor id reported to the guest: "VIRT" in little-endian (virtio-mmio allows any value).</summary>
    public const uint VendorIdContents = 0x54524956;

    /// <summary>Interrupt status bit: the device used a buffer in some queue.</summary>
    public const uint InterruptUsedBuffer = 1;
    /// <summary>Interrupt status bit: the device configuration (or status) changed.</summary>
    public const uint InterruptConfigChange = 2;
}
