using Virt.Memory;
using Xunit;

namespace Virt.Boot.Tests;

public sealed class KernelImageTests
{
    [Fact]
    public void Detects_each_format_and_unknown()
    {
        Assert.Equal(KernelFormat.BzImage, KernelImage.Detect(SyntheticImages.BzImage(payloadSize: 0x1000)));
        Assert.Equal(KernelFormat.PvhElf, KernelImage.Detect(SyntheticElf.Build(is64: true)));
        var multiboot = new byte[0x2000];
        SyntheticElf.MultibootHeader(0x10000, (0x100000, 0x100000, 0x101000, 0x102000, 0x100010)).CopyTo(multiboot, 0x40);
        Assert.Equal(KernelFormat.Multiboot, KernelImage.Detect(multiboot));
        Assert.Equal(KernelFormat.Unknown, KernelImage.Detect(new byte[0x3000]));
        Assert.Equal(KernelFormat.Unknown, KernelImage.Detect(SyntheticElf.Build(is64: true, pvhEntry: null)));
    }

    [Fact]
    public void Load_dispatches_by_format_and_an_unknown_image_fails_naming_a_header_field()
    {
        using var memory = GuestMemory.CreateRam(64 << 20);
        var pvh = KernelImage.Load(memory, SyntheticElf.Build(is64: true), new LinuxBootOptions { CommandLine = "x" });
        Assert.Equal(0x100020UL, pvh.EntryPoint.Value);

        var ex = Assert.Throws<BootImageException>(() => KernelImage.Load(memory, new byte[0x3000]));
        Assert.False(string.IsNullOrEmpty(ex.Field));
    }
}
