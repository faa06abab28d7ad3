using System.Security.Cryptography;
using System.Text;
using Virt.Testing;
using Xunit;

namespace Virt.Sdk.Tests;

/// <summary>
/// One Linux guest on the interpreter, booted once, with two shared folders that the guest kit's /init mounts: a
/// read-write one at /mnt/share and a read-only one at /mnt/ro. The guest hashes a host file, writes files, makes,
/// renames and removes entries, and tries to change the read-only share; then it prints a marker and waits.
/// </summary>
public sealed class BootedSharedFolderGuest : IAsyncLifetime
{
    public const string DoneMarker = "SHARE-CHECKS-DONE";

    private VirtualMachine? _vm;

    public string Root { get; } = Path.Combine(Path.GetTempPath(), "virt-sdk-share-" + Guid.NewGuid().ToString("N"));

    public string Share => Path.Combine(Root, "rw");

    public string ReadOnlyShare => Path.Combine(Root, "ro");

    public byte[] Input { get; } = RandomNumberGenerator.GetBytes(256 * 1024);

    public string ReadOnlyDigestBefore { get; private set; } = "";

    public MarkerStream Console { get; } = new(DoneMarker);

    public string? SkipReason { get; private set; }

    public async ValueTask InitializeAsync()
    {
        if (!OperatingSystem.IsLinux())
        {
            SkipReason = "Shared folders need a Linux host.";
            return;
        }

        if (!File.Exists(LinuxKit.Kernel) || !File.Exists(LinuxKit.Initrd))
        {
            SkipReason = "The guest kit is missing; run scripts/get-linux-guest.sh.";
            return;
        }

        Directory.CreateDirectory(Share);
        Directory.CreateDirectory(ReadOnlyShare);
        File.WriteAllBytes(Path.Combine(Share, "input.bin"), Input);
        File.WriteAllText(Path.Combine(Share, "to-delete.txt"), "bye");
        File.WriteAllText(Path.Combine(Share, "rename-me.txt"), "renamed content");
        File.WriteAllText(Path.Combine(ReadOnlyShare, "existing.txt"), "read-only content");
        ReadOnlyDigestBefore = Digest(ReadOnlyShare);

        string command = string.Join("; ",
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
            $"echo {DoneMarker}",
            "sleep 600");
        _vm = LinuxKit.Interactive(Console)
            .WithKernelCommandLine($"quiet virt.cmd={Convert.ToBase64String(Encoding.ASCII.GetBytes(command))}")
            .WithSharedFolder(Share, "share", readOnly: false, guestMountPoint: "/mnt/share")
            .WithSharedFolder(ReadOnlyShare, "ro", readOnly: true, guestMountPoint: "/mnt/ro")
            .Build();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(8));
        await _vm.StartAsync(timeout.Token);
        var exited = _vm.WaitForExitAsync(timeout.Token);
        try
        {
            await Task.WhenAny(Console.Seen.Task, exited).WaitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            // The tests report the missing marker with the console text.
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_vm is not null)
        {
            await _vm.DisposeAsync();
        }

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
public sealed class LinuxSharedFolderTests(BootedSharedFolderGuest guest) : IClassFixture<BootedSharedFolderGuest>
{
    private string Text => guest.Console.Text.Replace("\r", "", StringComparison.Ordinal);

    private void RequireGuest()
    {
        Assert.SkipWhen(guest.SkipReason is not null, guest.SkipReason ?? "");
        Assert.True(guest.Console.Seen.Task.IsCompletedSuccessfully, "the guest never reached " + BootedSharedFolderGuest.DoneMarker + ":\n" + Text);
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
        Assert.Contains($"{Convert.ToHexStringLower(SHA256.HashData(guest.Input))}  /mnt/share/input.bin", Text, StringComparison.Ordinal);
    }

    [Fact]
    public void Host_sees_the_files_the_guest_wrote()
    {
        RequireGuest();
        Assert.Equal("written-by-the-guest\n", File.ReadAllText(Path.Combine(guest.Share, "from-guest.txt")));
        Assert.Equal(guest.Input.AsSpan(0, 100000).ToArray(), File.ReadAllBytes(Path.Combine(guest.Share, "copy.bin")));
    }

    [Fact]
    public void Mkdir_rename_and_unlink_reach_the_host()
    {
        RequireGuest();
        Assert.Contains("OPS-STATUS=0", Text, StringComparison.Ordinal);
        Assert.Contains("NEWDIR-ENTRY=b", Text, StringComparison.Ordinal);
        Assert.Equal("moved\n", File.ReadAllText(Path.Combine(guest.Share, "newdir", "b")));
        Assert.False(File.Exists(Path.Combine(guest.Share, "newdir", "a")));
        Assert.False(File.Exists(Path.Combine(guest.Share, "to-delete.txt")));
        Assert.False(File.Exists(Path.Combine(guest.Share, "rename-me.txt")));
        Assert.Equal("renamed content", File.ReadAllText(Path.Combine(guest.Share, "renamed.txt")));
        Assert.False(Directory.Exists(Path.Combine(guest.Share, "gone")));
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

        Assert.Equal(guest.ReadOnlyDigestBefore, BootedSharedFolderGuest.Digest(guest.ReadOnlyShare));
    }
}
