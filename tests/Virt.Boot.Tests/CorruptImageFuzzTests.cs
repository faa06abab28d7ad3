using Virt.Memory;
using Virt.Testing;
using Xunit;

namespace Virt.Boot.Tests;

/// <summary>
/// Kernel images come from API users and may be truncated or corrupt: whatever the bytes, loading either
/// succeeds or fails with a <see cref="BootImageException"/> (or an <see cref="ArgumentException"/> about the
/// VM's memory) whose message names what is wrong. No other exception, no write outside guest RAM.
/// </summary>
public sealed class CorruptImageFuzzTests
{
    private const int Iterations = 3000;

    public static TheoryData<string> Formats() => new() { "bzImage", "pvh64", "pvh32", "multiboot" };

    private static byte[] Image(string format)
    {
        switch (format)
        {
            case "bzImage":
                return SyntheticImages.BzImage(payloadSize: 0x1000);
            case "pvh64":
                return SyntheticElf.Build(is64: true);
            case "pvh32":
                return SyntheticElf.Build(is64: false);
            default:
                var image = new byte[0x3000];
                SyntheticElf.MultibootHeader(0x10003, (0x100000, 0x100000, 0x102000, 0x103000, 0x100010)).CopyTo(image, 0x40);
                return image;
        }
    }

    [Theory]
    [MemberData(nameof(Formats))]
    public void Corrupted_and_truncated_images_load_or_fail_with_a_named_reason(string format)
    {
        var original = Image(format);
        var random = new Random(format.GetHashCode(StringComparison.Ordinal) ^ 0x5EED);
        using var memory = GuestMemory.CreateRam(32 << 20);
        int loaded = 0, refused = 0;
        for (int i = 0; i < Iterations; i++)
        {
            var image = (byte[])original.Clone();
            int flips = random.Next(1, 6);
            for (int f = 0; f < flips; f++)
            {
                // Mostly the headers (first 1 KiB), where the fields live; sometimes anywhere.
                int at = random.Next(4) == 0 ? random.Next(image.Length) : random.Next(Math.Min(1024, image.Length));
                image[at] = (byte)random.Next(256);
            }

            int length = random.Next(3) == 0 ? random.Next(image.Length + 1) : image.Length;
            try
            {
                KernelImage.Load(memory, image.AsSpan(0, length), new LinuxBootOptions { CommandLine = "console=ttyS0", Initrd = new byte[512] });
                loaded++;
            }
            catch (BootImageException e)
            {
                Assert.False(string.IsNullOrWhiteSpace(e.Message));
                refused++;
            }
            catch (ArgumentException e)
            {
                // Placements that do not fit this VM's memory: the message says what to give it.
                Assert.Contains("memory", e.Message, StringComparison.OrdinalIgnoreCase);
                refused++;
            }
        }

        Assert.Equal(Iterations, loaded + refused);
        Assert.True(refused > 0, "no corruption was detected at all");
    }

    [Fact]
    public void The_guest_kits_kernel_with_a_corrupted_setup_header_fails_with_a_named_field()
    {
        string path = Path.Combine(RepositoryPaths.LinuxGuestKit, "vmlinuz");
        Assert.SkipUnless(File.Exists(path), "The guest kit is missing; run scripts/get-linux-guest.sh.");
        var original = File.ReadAllBytes(path);
        var random = new Random(77);
        using var memory = GuestMemory.CreateRam(256 << 20);
        for (int i = 0; i < 200; i++)
        {
            var image = (byte[])original.Clone();
            image[0x1F0 + random.Next(0x80)] = (byte)random.Next(256);
            int length = random.Next(4) == 0 ? random.Next(0x10000) : image.Length;
            try
            {
                KernelImage.Load(memory, image.AsSpan(0, length), new LinuxBootOptions { CommandLine = "console=ttyS0" });
            }
            catch (BootImageException e)
            {
                Assert.False(string.IsNullOrWhiteSpace(e.Field), e.Message);
            }
            catch (ArgumentException e)
            {
                Assert.Contains("memory", e.Message, StringComparison.OrdinalIgnoreCase);
            }
        }
    }
}
