using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using Virt.Storage.SharedFolders;
using Xunit;

namespace Virt.Storage.Tests.SharedFolders;

/// <summary>Plays the guest's virtiofs driver against a <see cref="SharedFolderServer"/>: builds FUSE requests and reads the answers.</summary>
internal sealed class FuseClient(SharedFolderServer server)
{
    public const uint ReadOnly = 0;
    public const uint WriteOnly = 1;
    public const uint ReadWrite = 2;
    public const uint Creat = 0x40;
    public const uint Excl = 0x80;
    public const uint Trunc = 0x200;

    private readonly byte[] _reply = new byte[Fuse.OutHeaderSize + Fuse.MaxRead];
    private ulong _unique;

    public SharedFolderServer Server { get; } = server;

    /// <summary>Sends one request; returns the errno (0 for success) and the payload.</summary>
    public (int Error, byte[] Payload) Send(FuseOpcode opcode, ulong nodeId, params byte[][] arguments)
    {
        int length = Fuse.InHeaderSize + arguments.Sum(a => a.Length);
        var message = new byte[length];
        var header = new FuseInHeader { Length = (uint)length, Opcode = (uint)opcode, Unique = ++_unique, NodeId = nodeId };
        MemoryMarshal.Write(message, in header);
        int at = Fuse.InHeaderSize;
        foreach (var a in arguments)
        {
            a.CopyTo(message, at);
            at += a.Length;
        }

        return SendRaw(message);
    }

    /// <summary>Sends bytes as they are; checks the answer's framing.</summary>
    public (int Error, byte[] Payload) SendRaw(ReadOnlySpan<byte> message)
    {
        int n = Server.Handle(message, _reply);
        if (n == 0)
        {
            return (0, []);
        }

        var header = MemoryMarshal.Read<FuseOutHeader>(_reply);
        Assert.Equal((uint)n, header.Length);
        Assert.True(header.Error <= 0, $"positive error {header.Error}");
        return (-header.Error, _reply.AsSpan(Fuse.OutHeaderSize, n - Fuse.OutHeaderSize).ToArray());
    }

    public static byte[] Name(string name) => Encoding.UTF8.GetBytes(name + "\0");

    public static byte[] Bytes<T>(T value)
        where T : unmanaged
    {
        var b = new byte[Unsafe.SizeOf<T>()];
        MemoryMarshal.Write(b, in value);
        return b;
    }

    public static T Read<T>(byte[] payload, int offset = 0)
        where T : unmanaged => MemoryMarshal.Read<T>(payload.AsSpan(offset));

    public void Init()
    {
        var (error, payload) = Send(FuseOpcode.Init, 0, Bytes(new FuseInitIn { Major = 7, Minor = 38, MaxReadahead = 65536, Flags = uint.MaxValue }));
        Assert.Equal(0, error);
        Assert.Equal(7u, Read<FuseInitOut>(payload).Major);
    }

    public (int Error, FuseEntryOut Entry) Lookup(ulong parent, string name) => Entry(Send(FuseOpcode.Lookup, parent, Name(name)));

    public (int Error, FuseEntryOut Entry) MkDir(ulong parent, string name, uint mode = 0x1ED) =>
        Entry(Send(FuseOpcode.MkDir, parent, Bytes(new FuseMkDirIn { Mode = mode }), Name(name)));

    public (int Error, FuseEntryOut Entry) Symlink(ulong parent, string name, string target) =>
        Entry(Send(FuseOpcode.Symlink, parent, Name(name), Name(target)));

    public (int Error, FuseEntryOut Entry) Link(ulong target, ulong newParent, string name) =>
        Entry(Send(FuseOpcode.Link, newParent, Bytes(new FuseLinkIn { OldNodeId = target }), Name(name)));

    public (int Error, FuseEntryOut Entry, ulong Fh) Create(ulong parent, string name, uint flags = ReadWrite | Creat, uint mode = 0x1A4)
    {
        var (error, payload) = Send(FuseOpcode.Create, parent, Bytes(new FuseCreateIn { Flags = flags, Mode = mode }), Name(name));
        return error != 0 ? (error, default, 0) : (0, Read<FuseEntryOut>(payload), Read<FuseOpenOut>(payload, Fuse.EntryOutSize).Fh);
    }

    public (int Error, ulong Fh) Open(ulong node, uint flags = ReadOnly, bool directory = false)
    {
        var (error, payload) = Send(directory ? FuseOpcode.OpenDir : FuseOpcode.Open, node, Bytes(new FuseOpenIn { Flags = flags }));
        return error != 0 ? (error, 0) : (0, Read<FuseOpenOut>(payload).Fh);
    }

    public (int Error, byte[] Data) ReadFile(ulong fh, ulong offset, uint size) =>
        Send(FuseOpcode.Read, 0, Bytes(new FuseIoIn { Fh = fh, Offset = offset, Size = size }));

    public (int Error, uint Written) WriteFile(ulong fh, ulong offset, byte[] data)
    {
        var (error, payload) = Send(FuseOpcode.Write, 0, Bytes(new FuseIoIn { Fh = fh, Offset = offset, Size = (uint)data.Length }), data);
        return error != 0 ? (error, 0) : (0, Read<FuseWriteOut>(payload).Size);
    }

    public int Release(ulong fh, bool directory = false) =>
        Send(directory ? FuseOpcode.ReleaseDir : FuseOpcode.Release, 0, Bytes(new FuseReleaseIn { Fh = fh })).Error;

    public int Unlink(ulong parent, string name) => Send(FuseOpcode.Unlink, parent, Name(name)).Error;

    public int RmDir(ulong parent, string name) => Send(FuseOpcode.RmDir, parent, Name(name)).Error;

    public int Rename(ulong parent, string name, ulong newParent, string newName) =>
        Send(FuseOpcode.Rename, parent, Bytes(new FuseRenameIn { NewDir = newParent }), Name(name), Name(newName)).Error;

    public (int Error, FuseAttr Attr) GetAttr(ulong node)
    {
        var (error, payload) = Send(FuseOpcode.GetAttr, node, Bytes(new FuseGetAttrIn()));
        return error != 0 ? (error, default) : (0, Read<FuseAttrOut>(payload).Attr);
    }

    public (int Error, FuseAttr Attr) SetAttr(ulong node, FuseSetAttrIn set)
    {
        var (error, payload) = Send(FuseOpcode.SetAttr, node, Bytes(set));
        return error != 0 ? (error, default) : (0, Read<FuseAttrOut>(payload).Attr);
    }

    public (int Error, string Target) ReadLink(ulong node)
    {
        var (error, payload) = Send(FuseOpcode.ReadLink, node);
        return (error, Encoding.UTF8.GetString(payload));
    }

    public void Forget(ulong node, ulong count) => Send(FuseOpcode.Forget, node, Bytes(new FuseForgetIn { Nlookup = count }));

    /// <summary>Lists a directory with READDIR (or READDIRPLUS), following offsets until an empty answer.</summary>
    public List<(string Name, ulong NodeId)> List(ulong directory, bool plus = false, uint size = 4096)
    {
        var (error, fh) = Open(directory, directory: true);
        Assert.Equal(0, error);
        var names = new List<(string, ulong)>();
        ulong offset = 0;
        while (true)
        {
            var (e, payload) = Send(plus ? FuseOpcode.ReadDirPlus : FuseOpcode.ReadDir, directory, Bytes(new FuseIoIn { Fh = fh, Offset = offset, Size = size }));
            Assert.Equal(0, e);
            if (payload.Length == 0)
            {
                break;
            }

            int at = 0;
            while (at < payload.Length)
            {
                ulong node = 0;
                if (plus)
                {
                    node = Read<FuseEntryOut>(payload, at).NodeId;
                    at += Fuse.EntryOutSize;
                }

                offset = Read<ulong>(payload, at + 8);
                int nameLength = (int)Read<uint>(payload, at + 16);
                names.Add((Encoding.UTF8.GetString(payload, at + 24, nameLength), node));
                at += (24 + nameLength + 7) & ~7;
            }
        }

        Assert.Equal(0, Release(fh, directory: true));
        return names;
    }

    private static (int, FuseEntryOut) Entry((int Error, byte[] Payload) answer) =>
        answer.Error != 0 ? (answer.Error, default) : (0, Read<FuseEntryOut>(answer.Payload));
}

/// <summary>A temporary tree: <c>share/</c> (the shared folder) beside <c>outside/</c>, which nothing may touch.</summary>
internal sealed class ShareTree : IDisposable
{
    public ShareTree()
    {
        Directory.CreateDirectory(Share);
        Directory.CreateDirectory(Path.Combine(Outside, "sub"));
        File.WriteAllText(SecretFile, "outside secret");
        File.WriteAllText(Path.Combine(Outside, "sub", "inner.txt"), "inner");
    }

    public string Root { get; } = Path.Combine(Path.GetTempPath(), "virt-share-" + Guid.NewGuid().ToString("N"));

    public string Share => Path.Combine(Root, "share");

    public string Outside => Path.Combine(Root, "outside");

    public string SecretFile => Path.Combine(Outside, "secret.txt");

    public string InShare(string relative) => Path.Combine(Share, relative);

    /// <summary>A digest of everything outside the share: names, types, sizes, modes, times and contents under Root except share/.</summary>
    public string OutsideDigest()
    {
        var sb = new StringBuilder();
        foreach (var entry in new DirectoryInfo(Root).EnumerateFileSystemInfos())
        {
            sb.Append(entry.Name).Append('\n');
        }

        Walk(new DirectoryInfo(Outside), sb);
        return Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(Encoding.UTF8.GetBytes(sb.ToString())));
    }

    private static void Walk(DirectoryInfo directory, StringBuilder sb)
    {
        foreach (var entry in directory.EnumerateFileSystemInfos().OrderBy(e => e.Name, StringComparer.Ordinal))
        {
            sb.Append(entry.FullName).Append('|').Append(entry.Attributes).Append('|').Append(entry.UnixFileMode)
              .Append('|').Append(entry.LastWriteTimeUtc.Ticks).Append('|').Append(entry.LinkTarget);
            if (entry is FileInfo file && entry.LinkTarget is null)
            {
                sb.Append('|').Append(file.Length).Append('|').Append(Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(file.FullName))));
            }

            sb.Append('\n');
            if (entry is DirectoryInfo sub && entry.LinkTarget is null)
            {
                Walk(sub, sb);
            }
        }
    }

    public void Dispose()
    {
        try
        {
            // A guest may leave directories without permissions and links that loop (a -> ..): walk without following links.
            MakeWritable(new DirectoryInfo(Root));
            Directory.Delete(Root, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    private static void MakeWritable(DirectoryInfo directory)
    {
        if (OperatingSystem.IsWindows())
        {
            return;
        }

        directory.UnixFileMode |= UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;
        foreach (var sub in directory.EnumerateDirectories())
        {
            if (sub.LinkTarget is null)
            {
                MakeWritable(sub);
            }
        }
    }
}
