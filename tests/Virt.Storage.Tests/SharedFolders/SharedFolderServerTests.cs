using System.Security.Cryptography;
using System.Text;
using Virt.Storage.SharedFolders;
using Xunit;

namespace Virt.Storage.Tests.SharedFolders;

/// <summary>The FUSE operations a guest uses, served against a real host directory.</summary>
public sealed class SharedFolderServerTests : IDisposable
{
    private const ulong Root = SharedFolderServer.RootNodeId;

    private readonly ShareTree _tree = new();
    private readonly SharedFolderServer _server;
    private readonly FuseClient _fuse;

    public SharedFolderServerTests()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "Shared folders need a Linux host.");
        _server = new SharedFolderServer(_tree.Share, readOnly: false);
        _fuse = new FuseClient(_server);
        _fuse.Init();
    }

    public void Dispose()
    {
        _server?.Dispose();
        _tree.Dispose();
    }

    [Fact]
    public void Init_negotiates_only_flags_the_kernel_offered()
    {
        var (error, payload) = _fuse.Send(FuseOpcode.Init, 0, FuseClient.Bytes(new FuseInitIn { Major = 7, Minor = 38, Flags = Fuse.InitMaxPages | 1u << 31 }));
        Assert.Equal(0, error);
        var init = FuseClient.Read<FuseInitOut>(payload);
        Assert.Equal((7u, Fuse.KernelMinor, Fuse.InitMaxPages), (init.Major, init.Minor, init.Flags));
        Assert.Equal((uint)Fuse.MaxWrite, init.MaxWrite);
        Assert.Equal(Fuse.InitOutSize, payload.Length);
        Assert.Equal(Fuse.EPROTO, _fuse.Send(FuseOpcode.Init, 0, FuseClient.Bytes(new FuseInitIn { Major = 6 })).Error);
    }

    [Fact]
    public void Host_file_is_read_through_lookup_open_read()
    {
        var data = RandomNumberGenerator.GetBytes(300_000);
        File.WriteAllBytes(_tree.InShare("data.bin"), data);
        var entry = _fuse.Lookup(Root, "data.bin");
        Assert.Equal(0, entry.Error);
        Assert.Equal((ulong)data.Length, entry.Entry.Attr.Size);
        Assert.Equal(0x8000u, entry.Entry.Attr.Mode & 0xF000);
        var (error, fh) = _fuse.Open(entry.Entry.NodeId);
        Assert.Equal(0, error);
        var read = new List<byte>();
        for (ulong offset = 0; ; offset += 65536)
        {
            var chunk = _fuse.ReadFile(fh, offset, 65536);
            Assert.Equal(0, chunk.Error);
            if (chunk.Data.Length == 0)
            {
                break;
            }

            read.AddRange(chunk.Data);
        }

        Assert.Equal(data, read.ToArray());
        Assert.Equal(0, _fuse.Release(fh));
        Assert.Equal(0, _server.HandleCount);
    }

    [Fact]
    public void Created_and_written_file_appears_on_the_host()
    {
        var created = _fuse.Create(Root, "new.txt");
        Assert.Equal(0, created.Error);
        Assert.Equal((0, 5u), _fuse.WriteFile(created.Fh, 0, "hello"u8.ToArray()));
        Assert.Equal((0, 6u), _fuse.WriteFile(created.Fh, 5, " world"u8.ToArray()));
        Assert.Equal(0, _fuse.Send(FuseOpcode.Flush, created.Entry.NodeId, FuseClient.Bytes(new FuseReleaseIn { Fh = created.Fh })).Error);
        Assert.Equal(0, _fuse.Send(FuseOpcode.Fsync, created.Entry.NodeId, FuseClient.Bytes(new FuseFsyncIn { Fh = created.Fh })).Error);
        Assert.Equal(0, _fuse.Release(created.Fh));
        Assert.Equal("hello world", File.ReadAllText(_tree.InShare("new.txt")));
        Assert.Equal(Fuse.EEXIST, _fuse.Create(Root, "new.txt", FuseClient.ReadWrite | FuseClient.Creat | FuseClient.Excl).Error);

        var truncated = _fuse.SetAttr(created.Entry.NodeId, new FuseSetAttrIn { Valid = Fuse.SetAttrSize, Size = 5 });
        Assert.Equal((0, 5ul), (truncated.Error, truncated.Attr.Size));
        Assert.Equal("hello", File.ReadAllText(_tree.InShare("new.txt")));
    }

    [Fact]
    public void Mkdir_rename_unlink_and_rmdir_change_the_host_tree()
    {
        var dir = _fuse.MkDir(Root, "dir");
        Assert.Equal(0, dir.Error);
        Assert.True(Directory.Exists(_tree.InShare("dir")));
        var file = _fuse.Create(dir.Entry.NodeId, "a.txt");
        Assert.Equal(0, _fuse.Release(file.Fh));
        Assert.Equal(0, _fuse.Rename(dir.Entry.NodeId, "a.txt", Root, "b.txt"));
        Assert.True(File.Exists(_tree.InShare("b.txt")));
        Assert.Equal(0, _fuse.Rename(Root, "dir", Root, "dir2"));
        Assert.True(Directory.Exists(_tree.InShare("dir2")));
        Assert.Equal(0, _fuse.Unlink(Root, "b.txt"));
        Assert.False(File.Exists(_tree.InShare("b.txt")));
        Assert.Equal(Fuse.ENOENT, _fuse.Unlink(Root, "b.txt"));
        Assert.Equal(0, _fuse.RmDir(Root, "dir2"));
        Assert.False(Directory.Exists(_tree.InShare("dir2")));

        // RENAME2 with RENAME_NOREPLACE refuses to overwrite; RENAME_WHITEOUT is refused.
        _fuse.Release(_fuse.Create(Root, "x").Fh);
        _fuse.Release(_fuse.Create(Root, "y").Fh);
        var noReplace = FuseClient.Bytes(new FuseRename2In { NewDir = Root, Flags = 1 });
        Assert.Equal(Fuse.EEXIST, _fuse.Send(FuseOpcode.Rename2, Root, noReplace, FuseClient.Name("x"), FuseClient.Name("y")).Error);
        var whiteout = FuseClient.Bytes(new FuseRename2In { NewDir = Root, Flags = 4 });
        Assert.Equal(Fuse.EINVAL, _fuse.Send(FuseOpcode.Rename2, Root, whiteout, FuseClient.Name("x"), FuseClient.Name("z")).Error);
    }

    [Fact]
    public void Readdir_and_readdirplus_list_every_entry()
    {
        var expected = new HashSet<string> { ".", ".." };
        for (int i = 0; i < 300; i++)
        {
            string name = $"file-{i:D4}-{new string('x', i % 40)}";
            File.WriteAllText(_tree.InShare(name), "");
            expected.Add(name);
        }

        Assert.Equal(expected, _fuse.List(Root).Select(e => e.Name).ToHashSet());
        var plus = _fuse.List(Root, plus: true, size: 8192);
        Assert.Equal(expected, plus.Select(e => e.Name).ToHashSet());
        Assert.All(plus.Where(e => e.Name is not ("." or "..")), e => Assert.NotEqual(0ul, e.NodeId));
        Assert.All(plus.Where(e => e.Name is "." or ".."), e => Assert.Equal(0ul, e.NodeId));
        Assert.Equal(301, _server.InodeCount);
    }

    [Fact]
    public void Symlinks_and_hard_links_made_by_the_guest_are_links_on_the_host()
    {
        var target = _fuse.Create(Root, "target.txt");
        _fuse.WriteFile(target.Fh, 0, "t"u8.ToArray());
        var link = _fuse.Symlink(Root, "link", "target.txt");
        Assert.Equal(0, link.Error);
        Assert.Equal((0, "target.txt"), _fuse.ReadLink(link.Entry.NodeId));
        Assert.Equal("target.txt", new FileInfo(_tree.InShare("link")).LinkTarget);
        var hard = _fuse.Link(target.Entry.NodeId, Root, "hard.txt");
        Assert.Equal(0, hard.Error);
        Assert.Equal(target.Entry.NodeId, hard.Entry.NodeId);
        Assert.Equal(2u, hard.Entry.Attr.Nlink);
        Assert.Equal("t", File.ReadAllText(_tree.InShare("hard.txt")));
        Assert.Equal(Fuse.EINVAL, _fuse.ReadLink(target.Entry.NodeId).Error);
    }

    [Fact]
    public void Guest_sees_root_ownership_and_cannot_give_files_away()
    {
        var file = _fuse.Create(Root, "owned", mode: 0xFFF);
        Assert.Equal((0u, 0u), (file.Entry.Attr.Uid, file.Entry.Attr.Gid));

        // Set-user-ID, set-group-ID and sticky bits never reach a host file.
        Assert.Equal(0u, file.Entry.Attr.Mode & 0xE00);
        var chmod = _fuse.SetAttr(file.Entry.NodeId, new FuseSetAttrIn { Valid = Fuse.SetAttrMode, Mode = 0x8000 | 0xDED });
        Assert.Equal(0, chmod.Error);
        Assert.Equal(0x1EDu, chmod.Attr.Mode & 0xFFF);
        Assert.Equal(Fuse.EPERM, _fuse.SetAttr(file.Entry.NodeId, new FuseSetAttrIn { Valid = Fuse.SetAttrUid, Uid = 1000 }).Error);
        Assert.Equal(Fuse.EPERM, _fuse.SetAttr(file.Entry.NodeId, new FuseSetAttrIn { Valid = Fuse.SetAttrGid, Gid = 5 }).Error);
        Assert.Equal(0, _fuse.SetAttr(file.Entry.NodeId, new FuseSetAttrIn { Valid = Fuse.SetAttrUid | Fuse.SetAttrGid }).Error);
        var times = _fuse.SetAttr(file.Entry.NodeId, new FuseSetAttrIn { Valid = Fuse.SetAttrMtime, Mtime = 1_000_000_000 });
        Assert.Equal(1_000_000_000ul, times.Attr.Mtime);
        Assert.Equal(Fuse.EPERM, _fuse.Send(FuseOpcode.MkNod, Root, FuseClient.Bytes(new FuseMkNodIn { Mode = 0x2000 | 0x1B6, Rdev = 0x0103 }), FuseClient.Name("null")).Error);
        Assert.Equal(0, _fuse.Send(FuseOpcode.MkNod, Root, FuseClient.Bytes(new FuseMkNodIn { Mode = 0x8000 | 0x1A4 }), FuseClient.Name("plain")).Error);
    }

    [Fact]
    public async Task Host_fifo_cannot_be_opened()
    {
        using var mkfifo = System.Diagnostics.Process.Start("mkfifo", _tree.InShare("fifo"))!;
        await mkfifo.WaitForExitAsync(TestContext.Current.CancellationToken);
        Assert.Equal(0, mkfifo.ExitCode);
        var fifo = _fuse.Lookup(Root, "fifo");
        Assert.Equal(0, fifo.Error);
        Assert.Equal(Fuse.EACCES, _fuse.Open(fifo.Entry.NodeId, FuseClient.ReadOnly).Error);
    }

    [Fact]
    public void Forget_and_destroy_release_host_descriptors()
    {
        var a = _fuse.Create(Root, "a");
        var again = _fuse.Lookup(Root, "a");
        Assert.Equal(a.Entry.NodeId, again.Entry.NodeId);
        Assert.Equal(2, _server.InodeCount);
        _fuse.Forget(a.Entry.NodeId, 1);
        Assert.Equal(2, _server.InodeCount);
        var batch = new byte[8 + 16];
        BitConverter.TryWriteBytes(batch.AsSpan(0), 1u);
        BitConverter.TryWriteBytes(batch.AsSpan(8), a.Entry.NodeId);
        BitConverter.TryWriteBytes(batch.AsSpan(16), 1ul);
        Assert.Equal(0, _fuse.Send(FuseOpcode.BatchForget, 0, batch).Error);
        Assert.Equal(1, _server.InodeCount);
        Assert.Equal(1, _server.HandleCount);
        Assert.Equal(0, _fuse.Send(FuseOpcode.Destroy, 0).Error);
        Assert.Equal(0, _server.HandleCount);
    }

    [Fact]
    public void Statfs_lseek_and_unknown_opcodes()
    {
        var statfs = _fuse.Send(FuseOpcode.StatFs, Root);
        Assert.Equal(0, statfs.Error);
        Assert.Equal(255u, FuseClient.Read<FuseStatfsOut>(statfs.Payload).NameLength);
        var file = _fuse.Create(Root, "s");
        _fuse.WriteFile(file.Fh, 0, new byte[100]);
        var end = _fuse.Send(FuseOpcode.Lseek, file.Entry.NodeId, FuseClient.Bytes(new FuseLseekIn { Fh = file.Fh, Whence = 2 }));
        Assert.Equal((0, 100ul), (end.Error, FuseClient.Read<ulong>(end.Payload)));
        foreach (uint opcode in new uint[] { 0, 7, 19, 22, 31, 34, 39, 43, 48, 52, 53, 4096, uint.MaxValue })
        {
            Assert.Equal(Fuse.ENOSYS, _fuse.Send((FuseOpcode)opcode, Root).Error);
        }
    }

    [Fact]
    public void Read_only_share_refuses_every_write_with_erofs()
    {
        File.WriteAllText(_tree.InShare("ro.txt"), "read me");
        Directory.CreateDirectory(_tree.InShare("dir"));
        using var server = new SharedFolderServer(_tree.Share, readOnly: true);
        var fuse = new FuseClient(server);
        fuse.Init();
        var file = fuse.Lookup(Root, "ro.txt");
        Assert.Equal(0, file.Error);
        Assert.Equal(Fuse.EROFS, fuse.Open(file.Entry.NodeId, FuseClient.WriteOnly).Error);
        Assert.Equal(Fuse.EROFS, fuse.Open(file.Entry.NodeId, FuseClient.ReadWrite).Error);
        Assert.Equal(Fuse.EROFS, fuse.Open(file.Entry.NodeId, FuseClient.ReadOnly | FuseClient.Trunc).Error);
        Assert.Equal(Fuse.EROFS, fuse.Create(Root, "new").Error);
        Assert.Equal(Fuse.EROFS, fuse.MkDir(Root, "d").Error);
        Assert.Equal(Fuse.EROFS, fuse.Symlink(Root, "l", "x").Error);
        Assert.Equal(Fuse.EROFS, fuse.Link(file.Entry.NodeId, Root, "h").Error);
        Assert.Equal(Fuse.EROFS, fuse.Unlink(Root, "ro.txt"));
        Assert.Equal(Fuse.EROFS, fuse.RmDir(Root, "dir"));
        Assert.Equal(Fuse.EROFS, fuse.Rename(Root, "ro.txt", Root, "moved"));
        Assert.Equal(Fuse.EROFS, fuse.SetAttr(file.Entry.NodeId, new FuseSetAttrIn { Valid = Fuse.SetAttrSize }).Error);
        Assert.Equal(Fuse.EROFS, fuse.SetAttr(file.Entry.NodeId, new FuseSetAttrIn { Valid = Fuse.SetAttrMode, Mode = 0x1FF }).Error);
        Assert.Equal(Fuse.EROFS, fuse.Send(FuseOpcode.MkNod, Root, FuseClient.Bytes(new FuseMkNodIn { Mode = 0x81A4 }), FuseClient.Name("n")).Error);
        Assert.Equal(Fuse.EROFS, fuse.Send(FuseOpcode.Rename2, Root, FuseClient.Bytes(new FuseRename2In { NewDir = Root }), FuseClient.Name("ro.txt"), FuseClient.Name("m")).Error);
        Assert.Equal(Fuse.EROFS, fuse.Send(FuseOpcode.Fallocate, file.Entry.NodeId, new byte[32]).Error);
        var (error, fh) = fuse.Open(file.Entry.NodeId, FuseClient.ReadOnly);
        Assert.Equal(0, error);
        Assert.Equal(Fuse.EROFS, fuse.WriteFile(fh, 0, [1]).Error);
        Assert.Equal("read me", Encoding.UTF8.GetString(fuse.ReadFile(fh, 0, 100).Data));
        Assert.Equal("read me", File.ReadAllText(_tree.InShare("ro.txt")));
        Assert.Equal(["dir", "ro.txt"], Directory.GetFileSystemEntries(_tree.Share).Select(f => Path.GetFileName(f)!).Order(StringComparer.Ordinal).ToArray());
    }

    [Fact]
    public void Truncated_and_oversized_messages_are_answered_with_einval()
    {
        var header = FuseClient.Bytes(new FuseInHeader { Length = 1000, Opcode = (uint)FuseOpcode.Lookup, Unique = 7, NodeId = Root });
        Assert.Equal(Fuse.EINVAL, _fuse.SendRaw(header).Error);
        Assert.Equal(Fuse.EINVAL, _fuse.SendRaw(header.AsSpan(0, 20)).Error);
        Assert.Equal(Fuse.EINVAL, _fuse.SendRaw(header.AsSpan(0, 8)).Error);
        Assert.Equal(0, _server.Handle(header, new byte[8]));
        var extensions = FuseClient.Bytes(new FuseInHeader { Length = 40, Opcode = (uint)FuseOpcode.GetAttr, NodeId = Root, TotalExtensionLength = 1 });
        Assert.Equal(Fuse.EINVAL, _fuse.SendRaw(extensions).Error);
    }
}
