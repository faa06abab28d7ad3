using System.Security.Cryptography;
using System.Text;
using Virt.Testing;
using Xunit;

namespace Virt.Sdk.Tests;

/// <summary>
/// The shared-folder part of <see cref="BootedDevicesGuest"/>: two shared folders that the guest kit's /init mounts, a
/// read-write one at /mnt/share and a read-only one at /mnt/ro. The guest hashes a host file, writes files, makes,
/// renames and removes entries, and tries to change the read-only share; then it prints <see cref="DoneMarker"/>.
/// </summary>
public sealed class BootedSharedFolderGuest : IDisposable
{
    public const string DoneMarker = "SHARE-CHECKS-DONE";

    public BootedSharedFolderGuest()
    {
        Directory.CreateDirectory(Share);
        Directory.CreateDirectory(ReadOnlyShare);
        File.WriteAllBytes(Path.Combine(Share, "input.bin"), Input);
        File.WriteAllText(Path.Combine(Share, "to-delete.txt"), "bye");
        File.WriteAllText(Path.Combine(Share, "rename-me.txt"), "renamed content");
        File.WriteAllText(Path.Combine(ReadOnlyShare, "existing.txt"), "read-only content");
        ReadOnlyDigestBefore = Digest(ReadOnlyShare);
    }

    public string Root { get; } = Path.Combine(Path.GetTempPath(), "virt-sdk-share-" + Guid.NewGuid().ToString("N"));

    public string Share => Path.Combine(Root, "rw");

    public string ReadOnlyShare => Path.Combine(Root, "ro");

    public byte[] Input { get; } = RandomNumberGenerator.GetBytes(256 * 1024);

    public string ReadOnlyDigestBefore { get; }

    /// <summary>What the guest runs; ends by printing <see cref="DoneMarker"/>.</summary>
    public static string Command => string.Join("; ",
        "grep virtiofs /proc/mounts",
        "sha256sum /mnt/share/input.bin",
        "echo written-by-the-guest > /mnt/share/from-guest.txt",
        "head -c 100000 /mnt/share/input.bin > /mnt/share/copy.bin",
        "mkdir /mnt/share/newdir && echo moved > /mnt/share/newdir/a && mv /mnt/share/newdir/a /mnt/share/newdir/b"
            + " && rm /mnt/share/to-delete.txt && mv /mnt/share/rename-me.txt /mnt/share/renamed.txt && mkdir /mnt/share/gone && rmdir /mnt/share/gone",
        "echo OPS-STATUS=$?",
        "ls /mnt/share/newdir | sed 's/^/NEWDIR-ENTRY=/'",
        "cat /mnt/ro/existing.txt",
        "touch /mnt/ro/new.txt; echo RO-CREATE=$?",
        "echo changed > /mnt/ro/existing.txt; echo RO-WRITE=$?",
        "rm -f /mnt/ro/existing.txt < /dev/null; echo RO-RM=$?",
        "mkdir /mnt/ro/dir; echo RO-MKDIR=$?",
        "sync",
        $"echo {DoneMarker}");

    /// <summary>Adds both shares to <paramref name="builder"/>.</summary>
    public VirtualMachineBuilder Configure(VirtualMachineBuilder builder) => builder
        .WithSharedFolder(Share, "share", readOnly: false, guestMountPoint: "/mnt/share")
        .WithSharedFolder(ReadOnlyShare, "ro", readOnly: true, guestMountPoint: "/mnt/ro");

    public void Dispose()
    {
        try
        {
            Directory.Delete(Root, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    public static string Digest(string directory)
    {
        var sb = new StringBuilder();
        foreach (var file in Directory.GetFileSystemEntries(directory, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal))
        {
            sb.Append(file).Append('|');
            if (File.Exists(file))
            {
                sb.Append(Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(file))));
            }

            sb.Append('\n');
        }

        return sb.ToString();
    }
}

/// <summary>A Linux guest reads and writes a shared folder and the host sees the writes; a read-only share refuses them.</summary>
[Collection(nameof(BootedDevicesGuest))]
public sealed class LinuxSharedFolderTests(BootedDevicesGuest devices)
{
    private BootedSharedFolderGuest Guest => devices.SharedFolders!;

    private string Text => devices.Console.Text.Replace("\r", "", StringComparison.Ordinal);

    private void RequireGuest()
    {
        devices.Require();
        Assert.SkipUnless(OperatingSystem.IsLinux(), "Shared folders need a Linux host.");
        Assert.True(Text.Contains(BootedSharedFolderGuest.DoneMarker, StringComparison.Ordinal), "the guest never reached " + BootedSharedFolderGuest.DoneMarker + ":\n" + Text);
    }

    [Fact]
    public void Init_mounts_both_shares()
    {
        RequireGuest();
        Assert.Contains("VIRT-MOUNT-READY=share:/mnt/share", Text, StringComparison.Ordinal);
        Assert.Contains("VIRT-MOUNT-READY=ro:/mnt/ro", Text, StringComparison.Ordinal);
        Assert.Matches(@"share /mnt/share virtiofs rw", Text);
        Assert.Matches(@"ro /mnt/ro virtiofs ro", Text);
    }

    [Fact]
    public void Guest_reads_a_host_file_with_the_same_hash()
    {
        RequireGuest();
        Assert.Contains($"{Convert.ToHexStringLower(SHA256.HashData(Guest.Input))}  /mnt/share/input.bin", Text, StringComparison.Ordinal);
    }

    [Fact]
    public void Host_sees_the_files_the_guest_wrote()
    {
        RequireGuest();
        Assert.Equal("written-by-the-guest\n", File.ReadAllText(Path.Combine(Guest.Share, "from-guest.txt")));
        Assert.Equal(Guest.Input.AsSpan(0, 100000).ToArray(), File.ReadAllBytes(Path.Combine(Guest.Share, "copy.bin")));
    }

    [Fact]
    public void Mkdir_rename_and_unlink_reach_the_host()
    {
        RequireGuest();
        Assert.Contains("OPS-STATUS=0", Text, StringComparison.Ordinal);
        Assert.Contains("NEWDIR-ENTRY=b", Text, StringComparison.Ordinal);
        Assert.Equal("moved\n", File.ReadAllText(Path.Combine(Guest.Share, "newdir", "b")));
        Assert.False(File.Exists(Path.Combine(Guest.Share, "newdir", "a")));
        Assert.False(File.Exists(Path.Combine(Guest.Share, "to-delete.txt")));
        Assert.False(File.Exists(Path.Combine(Guest.Share, "rename-me.txt")));
        Assert.Equal("renamed content", File.ReadAllText(Path.Combine(Guest.Share, "renamed.txt")));
        Assert.False(Directory.Exists(Path.Combine(Guest.Share, "gone")));
    }

    [Fact]
    public void Read_only_share_refuses_every_write()
    {
        RequireGuest();
        Assert.Contains("read-only content", Text, StringComparison.Ordinal);
        foreach (string check in new[] { "RO-CREATE", "RO-WRITE", "RO-RM", "RO-MKDIR" })
        {
            Assert.Matches($"{check}=[1-9]", Text);
        }

        Assert.Equal(Guest.ReadOnlyDigestBefore, BootedSharedFolderGuest.Digest(Guest.ReadOnlyShare));
    }
}
