using System.Text;
using Virt.Storage.SharedFolders;
using Xunit;

namespace Virt.Storage.Tests.SharedFolders;

/// <summary>
/// The ways out of a shared folder a hostile guest would try, each sent as FUSE requests straight to the request
/// handler. Every one is refused, and nothing beside the share changes.
/// </summary>
public sealed class SharedFolderEscapeTests : IDisposable
{
    private const ulong Root = SharedFolderServer.RootNodeId;
    private const uint SymlinkType = 0xA000;

    private readonly ShareTree _tree = new();
    private readonly SharedFolderServer _server;
    private readonly FuseClient _fuse;
    private readonly string _before;

    public SharedFolderEscapeTests()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "Shared folders need a Linux host.");
        File.CreateSymbolicLink(_tree.InShare("abs"), _tree.SecretFile);
        File.CreateSymbolicLink(_tree.InShare("absdir"), _tree.Outside);
        File.CreateSymbolicLink(_tree.InShare("rel"), "../outside/secret.txt");
        _before = _tree.OutsideDigest();
        _server = new SharedFolderServer(_tree.Share, readOnly: false);
        _fuse = new FuseClient(_server);
        _fuse.Init();
    }

    public void Dispose()
    {
        _server.Dispose();
        _tree.Dispose();
    }

    private void AssertOutsideUntouched() => Assert.Equal(_before, _tree.OutsideDigest());

    [Fact]
    public void Dot_dot_is_refused()
    {
        Assert.Equal(Fuse.EINVAL, _fuse.Lookup(Root, "..").Error);
        Assert.Equal(Fuse.EINVAL, _fuse.Lookup(Root, ".").Error);
        Assert.Equal(Fuse.EINVAL, _fuse.Lookup(Root, "../outside").Error);
        Assert.Equal(Fuse.EINVAL, _fuse.Lookup(Root, "../outside/secret.txt").Error);
        var sub = _fuse.MkDir(Root, "sub");
        Assert.Equal(0, sub.Error);
        Assert.Equal(Fuse.EINVAL, _fuse.Lookup(sub.Entry.NodeId, "..").Error);
        Assert.Equal(Fuse.EINVAL, _fuse.MkDir(sub.Entry.NodeId, "..").Error);
        Assert.Equal(Fuse.EINVAL, _fuse.Create(Root, "../escaped.txt").Error);
        Assert.Equal(Fuse.EINVAL, _fuse.Rename(Root, "sub", Root, "../moved-out"));
        Assert.Equal(Fuse.EINVAL, _fuse.Unlink(Root, "../outside/secret.txt"));
        Assert.Equal(Fuse.EINVAL, _fuse.Symlink(Root, "..", "/").Error);
        Assert.Equal(Fuse.EINVAL, _fuse.RmDir(sub.Entry.NodeId, ".."));
        Assert.False(File.Exists(Path.Combine(_tree.Root, "escaped.txt")));
        AssertOutsideUntouched();
    }

    [Fact]
    public void Absolute_symlink_is_never_followed()
    {
        var link = _fuse.Lookup(Root, "abs");
        Assert.Equal(0, link.Error);
        Assert.Equal(SymlinkType, link.Entry.Attr.Mode & 0xF000);
        Assert.Equal((0, _tree.SecretFile), _fuse.ReadLink(link.Entry.NodeId));

        Assert.Equal(Fuse.ELOOP, _fuse.Open(link.Entry.NodeId, FuseClient.ReadOnly).Error);
        Assert.Equal(Fuse.ELOOP, _fuse.Open(link.Entry.NodeId, FuseClient.WriteOnly | FuseClient.Trunc).Error);
        Assert.Equal(Fuse.ELOOP, _fuse.Create(Root, "abs", FuseClient.WriteOnly | FuseClient.Creat | FuseClient.Trunc).Error);
        Assert.Equal(Fuse.EINVAL, _fuse.SetAttr(link.Entry.NodeId, new FuseSetAttrIn { Valid = Fuse.SetAttrSize }).Error);
        Assert.Equal(Fuse.EOPNOTSUPP, _fuse.SetAttr(link.Entry.NodeId, new FuseSetAttrIn { Valid = Fuse.SetAttrMode, Mode = 0x1FF }).Error);
        Assert.Equal(Fuse.EOPNOTSUPP, _fuse.SetAttr(link.Entry.NodeId, new FuseSetAttrIn { Valid = Fuse.SetAttrMtimeNow }).Error);

        // A link to a directory outside is not a directory to the server.
        var dir = _fuse.Lookup(Root, "absdir");
        Assert.Equal(0, dir.Error);
        Assert.Equal(Fuse.ENOTDIR, _fuse.Lookup(dir.Entry.NodeId, "secret.txt").Error);
        Assert.Equal(Fuse.ENOTDIR, _fuse.Create(dir.Entry.NodeId, "planted.txt").Error);
        Assert.Equal(Fuse.ENOTDIR, _fuse.Open(dir.Entry.NodeId, directory: true).Error);
        Assert.Equal(Fuse.ENOTDIR, _fuse.Unlink(dir.Entry.NodeId, "secret.txt"));

        // A relative one climbing out is the same: readable as a link, never followed.
        var rel = _fuse.Lookup(Root, "rel");
        Assert.Equal((0, "../outside/secret.txt"), _fuse.ReadLink(rel.Entry.NodeId));
        Assert.Equal(Fuse.ELOOP, _fuse.Open(rel.Entry.NodeId, FuseClient.ReadWrite).Error);

        // The guest may make its own absolute links; they are data, and the host does not follow them either.
        var made = _fuse.Symlink(Root, "mine", _tree.Outside + "/sub");
        Assert.Equal(0, made.Error);
        Assert.Equal(Fuse.ENOTDIR, _fuse.MkDir(made.Entry.NodeId, "planted").Error);
        AssertOutsideUntouched();
    }

    [Fact]
    public void Symlink_race_directory_swapped_for_a_symlink_between_lookup_and_open_stays_inside()
    {
        Directory.CreateDirectory(_tree.InShare("d"));
        File.WriteAllText(_tree.InShare("d/file.txt"), "inside");
        var d = _fuse.Lookup(Root, "d");
        var file = _fuse.Lookup(d.Entry.NodeId, "file.txt");
        Assert.Equal(0, file.Error);

        // The host side (or another guest process through a rename) swaps the directory for a link out.
        Directory.Move(_tree.InShare("d"), _tree.InShare("d-moved"));
        File.CreateSymbolicLink(_tree.InShare("d"), _tree.Outside);
        File.WriteAllText(Path.Combine(_tree.Outside, "file.txt.probe"), "x");
        File.Delete(Path.Combine(_tree.Outside, "file.txt.probe"));
        string before = _tree.OutsideDigest();

        // Node ids stand for the inodes looked up, not for the names: they still reach the moved directory.
        var (error, fh) = _fuse.Open(file.Entry.NodeId, FuseClient.ReadOnly);
        Assert.Equal(0, error);
        Assert.Equal("inside", Encoding.UTF8.GetString(_fuse.ReadFile(fh, 0, 100).Data));
        Assert.Equal(Fuse.ENOENT, _fuse.Lookup(d.Entry.NodeId, "secret.txt").Error);
        Assert.Equal(0, _fuse.Create(d.Entry.NodeId, "created.txt").Error);
        Assert.True(File.Exists(_tree.InShare("d-moved/created.txt")));

        // A fresh lookup finds the link, and the link is never followed.
        var swapped = _fuse.Lookup(Root, "d");
        Assert.Equal(SymlinkType, swapped.Entry.Attr.Mode & 0xF000);
        Assert.Equal(Fuse.ENOTDIR, _fuse.Lookup(swapped.Entry.NodeId, "secret.txt").Error);
        Assert.Equal(Fuse.ENOTDIR, _fuse.Create(swapped.Entry.NodeId, "created.txt").Error);
        Assert.Equal(Fuse.ENOTDIR, _fuse.Rename(swapped.Entry.NodeId, "secret.txt", Root, "stolen"));
        Assert.Equal(Fuse.ENOTDIR, _fuse.Rename(Root, "d-moved", swapped.Entry.NodeId, "planted"));
        Assert.Equal(before, _tree.OutsideDigest());
    }

    [Fact]
    public void Hard_link_to_an_outside_file_is_impossible()
    {
        ulong outsideIno = (ulong)new Interop_Probe(_tree.SecretFile).Ino;
        uint linksBefore = new Interop_Probe(_tree.SecretFile).Nlink;

        // Node ids are only those the server handed out: the outside file's inode number, or anything forged, is no handle.
        foreach (ulong forged in new[] { outsideIno, 0UL, 2UL, 1000UL, ulong.MaxValue, 1UL << 63 })
        {
            Assert.Equal(Fuse.ESTALE, _fuse.Link(forged, Root, "stolen").Error);
        }

        // Linking the symbolic link that points out links the link itself, not what it points at.
        var link = _fuse.Lookup(Root, "abs");
        var copy = _fuse.Link(link.Entry.NodeId, Root, "copy");
        Assert.Equal(0, copy.Error);
        Assert.Equal(SymlinkType, copy.Entry.Attr.Mode & 0xF000);
        Assert.Equal(_tree.SecretFile, new FileInfo(_tree.InShare("copy")).LinkTarget);
        Assert.Equal(Fuse.ELOOP, _fuse.Open(copy.Entry.NodeId, FuseClient.ReadWrite).Error);

        // Directories cannot be hard-linked (no way to make a second parent).
        var sub = _fuse.MkDir(Root, "sub");
        Assert.Equal(Fuse.EPERM, _fuse.Link(sub.Entry.NodeId, Root, "sub2").Error);

        Assert.Equal(linksBefore, new Interop_Probe(_tree.SecretFile).Nlink);
        Assert.False(File.Exists(_tree.InShare("stolen")));
        AssertOutsideUntouched();
    }

    [Fact]
    public void Very_long_names_are_refused()
    {
        string longest = new('n', Fuse.NameMax);
        Assert.Equal(0, _fuse.Create(Root, longest).Error);
        Assert.Equal(0, _fuse.Lookup(Root, longest).Error);
        foreach (int length in new[] { Fuse.NameMax + 1, 4096, 70_000, Fuse.MaxRequest })
        {
            string name = new('n', length);
            Assert.Equal(Fuse.ENAMETOOLONG, _fuse.Lookup(Root, name).Error);
            Assert.Equal(Fuse.ENAMETOOLONG, _fuse.Create(Root, name).Error);
            Assert.Equal(Fuse.ENAMETOOLONG, _fuse.MkDir(Root, name).Error);
            Assert.Equal(Fuse.ENAMETOOLONG, _fuse.Symlink(Root, name, "x").Error);
            Assert.Equal(Fuse.ENAMETOOLONG, _fuse.Rename(Root, longest, Root, name));
        }

        // A long path made of climbing components is one name with slashes: refused as such, never resolved.
        string climbing = string.Concat(Enumerable.Repeat("../", 40)) + "outside/secret.txt";
        Assert.Equal(Fuse.EINVAL, _fuse.Lookup(Root, climbing).Error);
        Assert.Equal(Fuse.ENAMETOOLONG, _fuse.Lookup(Root, string.Concat(Enumerable.Repeat("../", 400)) + "outside/secret.txt").Error);
        Assert.Equal(Fuse.ENAMETOOLONG, _fuse.Symlink(Root, "t", new string('x', Fuse.PathMax + 1)).Error);
        Assert.Equal(0, _fuse.Symlink(Root, "t", new string('x', Fuse.PathMax)).Error);
        Assert.Single(Directory.GetFiles(_tree.Share), f => Path.GetFileName(f) == longest);
        AssertOutsideUntouched();
    }

    [Fact]
    public void Nul_bytes_in_names_are_refused()
    {
        byte[] Raw(string s) => Encoding.UTF8.GetBytes(s);
        foreach (var name in new[] { Raw("a\0../outside\0"), Raw("\0"), Raw("abs\0x\0"), Raw("no-terminator"), Raw("..\0\0"), Raw("x/\0") })
        {
            Assert.Equal(Fuse.EINVAL, _fuse.Send(FuseOpcode.Lookup, Root, name).Error);
            Assert.Equal(Fuse.EINVAL, _fuse.Send(FuseOpcode.MkDir, Root, FuseClient.Bytes(new FuseMkDirIn { Mode = 0x1ED }), name).Error);
            Assert.Equal(Fuse.EINVAL, _fuse.Send(FuseOpcode.Create, Root, FuseClient.Bytes(new FuseCreateIn { Flags = 0x42, Mode = 0x1A4 }), name).Error);
            Assert.Equal(Fuse.EINVAL, _fuse.Send(FuseOpcode.Unlink, Root, name).Error);
        }

        // Rename with a NUL inside the first name shifts the second; both must be exact.
        Assert.Equal(Fuse.EINVAL, _fuse.Send(FuseOpcode.Rename, Root, FuseClient.Bytes(new FuseRenameIn { NewDir = Root }), Raw("abs\0..\0x\0")).Error);
        Assert.Equal(Fuse.EINVAL, _fuse.Send(FuseOpcode.Symlink, Root, Raw("l\0/etc\0passwd\0")).Error);
        Assert.Equal(Fuse.EINVAL, _fuse.Send(FuseOpcode.Symlink, Root, Raw("l\0\0")).Error);
        Assert.Equal(["abs", "absdir", "rel"], Directory.GetFileSystemEntries(_tree.Share).Select(f => Path.GetFileName(f)!).Order(StringComparer.Ordinal).ToArray());
        AssertOutsideUntouched();
    }

    [Fact]
    public void Forged_or_forgotten_node_ids_are_refused()
    {
        ulong outsideIno = new Interop_Probe(_tree.SecretFile).Ino;
        foreach (ulong forged in new[] { 0UL, 2UL, 3UL, outsideIno, ulong.MaxValue })
        {
            Assert.Equal(Fuse.ESTALE, _fuse.GetAttr(forged).Error);
            Assert.Equal(Fuse.ESTALE, _fuse.Open(forged, FuseClient.ReadOnly).Error);
            Assert.Equal(Fuse.ESTALE, _fuse.Lookup(forged, "secret.txt").Error);
            Assert.Equal(Fuse.ESTALE, _fuse.Open(forged, directory: true).Error);
        }

        // Handles are only those OPEN gave out.
        Assert.Equal(Fuse.EBADF, _fuse.ReadFile(12345, 0, 10).Error);
        Assert.Equal(Fuse.EBADF, _fuse.WriteFile(0, 0, [1]).Error);

        var file = _fuse.Create(Root, "f");
        Assert.Equal(0, _fuse.Release(file.Fh));
        Assert.Equal(Fuse.EBADF, _fuse.ReadFile(file.Fh, 0, 10).Error);
        _fuse.Forget(file.Entry.NodeId, 1);
        Assert.Equal(Fuse.ESTALE, _fuse.GetAttr(file.Entry.NodeId).Error);
        Assert.Equal(1, _server.InodeCount);
        AssertOutsideUntouched();
    }

    /// <summary>Reads an inode's number and link count with statx, without following links.</summary>
    private readonly unsafe struct Interop_Probe
    {
        public Interop_Probe(string path)
        {
            var bytes = Encoding.UTF8.GetBytes(path + "\0");
            Interop.FileSystem.Statx st;
            fixed (byte* p = bytes)
            {
                Assert.Equal(0, Interop.FileSystem.StatxAt(Interop.FileSystem.AT_FDCWD, p, Interop.FileSystem.AT_SYMLINK_NOFOLLOW, Interop.FileSystem.STATX_BASIC_STATS, &st));
            }

            Ino = st.Ino;
            Nlink = st.Nlink;
        }

        public ulong Ino { get; }

        public uint Nlink { get; }
    }
}
