using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using Virt.Storage.SharedFolders;
using Xunit;

namespace Virt.Storage.Tests.SharedFolders;

/// <summary>
/// A hostile guest's FUSE traffic: a million requests, mostly well-formed enough to reach the file system (known
/// opcodes, node ids and handles the server gave out, names from a dictionary of escapes), some corrupted, some pure
/// noise. Nothing may throw, every answer must be well framed, and nothing beside the share may change.
/// </summary>
public sealed class FuseFuzzTests
{
    private static readonly byte[][] Names =
    [
        .. new[] { "a", "b", "c", "dir", "sub", "abs", "absdir", "rel", "file.txt", "..", ".", "", "x/y", "../outside", "/etc/passwd", "n\0m" }
            .Select(s => Encoding.UTF8.GetBytes(s)),
        Encoding.UTF8.GetBytes(new string('L', 255)),
        Encoding.UTF8.GetBytes(new string('L', 256)),
    ];

    private static readonly uint[] OpenFlags = [0, 1, 2, 3, 0x200, 0x241, 0x42, 0xC2, 0x400, 0x10000, 0x20000, 0x200000, 0x410000, 0x101002];

    [Fact]
    public void A_million_hostile_requests_throw_nothing_and_touch_nothing_outside_the_share()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "Shared folders need a Linux host.");
        int iterations = int.TryParse(Environment.GetEnvironmentVariable("VIRT_FUSE_FUZZ_ITERATIONS"), out int n) ? n : 1_000_000;
        using var tree = new ShareTree();
        File.CreateSymbolicLink(tree.InShare("abs"), tree.SecretFile);
        File.CreateSymbolicLink(tree.InShare("absdir"), tree.Outside);
        File.CreateSymbolicLink(tree.InShare("rel"), "../outside");
        File.WriteAllText(tree.InShare("file.txt"), "inside");
        string before = tree.OutsideDigest();

        using var server = new SharedFolderServer(tree.Share, readOnly: false);
        var rng = new Random(20261202);
        var message = new byte[8192];
        var reply = new byte[Fuse.OutHeaderSize + 65536];
        var nodes = new List<ulong> { SharedFolderServer.RootNodeId };
        var handles = new List<ulong>();
        int answered = 0, succeeded = 0;
        for (int i = 0; i < iterations; i++)
        {
            int length = Build(rng, message, nodes, handles, out uint opcode);
            int replyLength = rng.Next(20) == 0 ? rng.Next(reply.Length) : reply.Length;
            int written = server.Handle(message.AsSpan(0, length), reply.AsSpan(0, replyLength));
            if (written == 0)
            {
                continue;
            }

            answered++;
            Assert.InRange(written, Fuse.OutHeaderSize, replyLength);
            var header = MemoryMarshal.Read<FuseOutHeader>(reply);
            Assert.Equal((uint)written, header.Length);
            Assert.InRange(header.Error, -4095, 0);
            if (header.Error == 0)
            {
                succeeded++;
                Harvest((FuseOpcode)opcode, reply.AsSpan(Fuse.OutHeaderSize, written - Fuse.OutHeaderSize), nodes, handles, rng);
            }
        }

        Assert.True(server.InodeCount <= SharedFolderServer.MaxInodes);
        Assert.True(server.HandleCount <= SharedFolderServer.MaxHandles);
        Assert.True(succeeded > iterations / 50, $"only {succeeded} of {answered} answers were successes; the generator no longer reaches the file system");
        server.Dispose();
        Assert.Equal(before, tree.OutsideDigest());
    }

    private static void Harvest(FuseOpcode opcode, ReadOnlySpan<byte> payload, List<ulong> nodes, List<ulong> handles, Random rng)
    {
        switch (opcode)
        {
            case FuseOpcode.Lookup or FuseOpcode.MkDir or FuseOpcode.MkNod or FuseOpcode.Symlink or FuseOpcode.Link or FuseOpcode.Create when payload.Length >= 8:
                Remember(nodes, BinaryPrimitives.ReadUInt64LittleEndian(payload), rng);
                if (opcode == FuseOpcode.Create && payload.Length >= Fuse.EntryOutSize + 8)
                {
                    Remember(handles, BinaryPrimitives.ReadUInt64LittleEndian(payload[Fuse.EntryOutSize..]), rng);
                }

                break;
            case FuseOpcode.Open or FuseOpcode.OpenDir when payload.Length >= 8:
                Remember(handles, BinaryPrimitives.ReadUInt64LittleEndian(payload), rng);
                break;
        }
    }

    private static void Remember(List<ulong> list, ulong value, Random rng)
    {
        if (list.Count < 64)
        {
            list.Add(value);
        }
        else
        {
            list[1 + rng.Next(list.Count - 1)] = value;
        }
    }

    private static ulong Pick(Random rng, List<ulong> from) =>
        from.Count > 0 && rng.Next(10) != 0 ? from[rng.Next(from.Count)] : rng.Next(4) == 0 ? (ulong)rng.NextInt64() : (ulong)rng.Next(200);

    private static int Build(Random rng, byte[] message, List<ulong> nodes, List<ulong> handles, out uint opcode)
    {
        if (rng.Next(30) == 0)
        {
            // Noise.
            int noise = rng.Next(200);
            rng.NextBytes(message.AsSpan(0, noise));
            opcode = noise >= 8 ? BinaryPrimitives.ReadUInt32LittleEndian(message.AsSpan(4)) : 0;
            return noise;
        }

        opcode = rng.Next(40) == 0 ? (uint)rng.Next() : (uint)rng.Next(1, 53);
        if (opcode == (uint)FuseOpcode.Destroy && rng.Next(20) != 0)
        {
            opcode = (uint)FuseOpcode.GetAttr;
        }

        var args = message.AsSpan(Fuse.InHeaderSize);
        int at = 0;
        void U32(Span<byte> a, uint v) { BinaryPrimitives.WriteUInt32LittleEndian(a[at..], v); at += 4; }
        void U64(Span<byte> a, ulong v) { BinaryPrimitives.WriteUInt64LittleEndian(a[at..], v); at += 8; }
        void Name(Span<byte> a)
        {
            var name = rng.Next(8) == 0 ? RandomName(rng) : Names[rng.Next(Names.Length)];
            name.CopyTo(a[at..]);
            at += name.Length;
            a[at++] = 0;
        }

        ulong SmallOffset() => rng.Next(10) switch { 0 => (ulong)rng.NextInt64(), 1 => 1UL << 40, _ => (ulong)rng.Next(8192) };

        switch ((FuseOpcode)opcode)
        {
            case FuseOpcode.Init:
                U32(args, (uint)rng.Next(5, 9)); U32(args, (uint)rng.Next(40)); U32(args, (uint)rng.Next()); U32(args, (uint)rng.Next()); at += rng.Next(2) * 48;
                break;
            case FuseOpcode.Lookup or FuseOpcode.Unlink or FuseOpcode.RmDir:
                Name(args);
                break;
            case FuseOpcode.MkDir:
                U32(args, (uint)rng.Next(0x10000)); U32(args, (uint)rng.Next(0x200)); Name(args);
                break;
            case FuseOpcode.MkNod:
                U32(args, rng.Next(2) == 0 ? 0x81A4u : (uint)rng.Next(0x10000)); U32(args, (uint)rng.Next()); U32(args, 0x12); U32(args, 0); Name(args);
                break;
            case FuseOpcode.Symlink:
                Name(args); Name(args);
                break;
            case FuseOpcode.Rename:
                U64(args, Pick(rng, nodes)); Name(args); Name(args);
                break;
            case FuseOpcode.Rename2:
                U64(args, Pick(rng, nodes)); U32(args, (uint)rng.Next(8)); U32(args, 0); Name(args); Name(args);
                break;
            case FuseOpcode.Link:
                U64(args, Pick(rng, nodes)); Name(args);
                break;
            case FuseOpcode.Open or FuseOpcode.OpenDir:
                U32(args, OpenFlags[rng.Next(OpenFlags.Length)]); U32(args, 0);
                break;
            case FuseOpcode.Create:
                U32(args, OpenFlags[rng.Next(OpenFlags.Length)] | 0x40); U32(args, (uint)rng.Next(0x10000)); U32(args, 0x12); U32(args, 0); Name(args);
                break;
            case FuseOpcode.Read or FuseOpcode.Write or FuseOpcode.ReadDir or FuseOpcode.ReadDirPlus:
                uint size = (uint)(rng.Next(10) == 0 ? rng.Next() : rng.Next(4096));
                U64(args, Pick(rng, handles)); U64(args, SmallOffset()); U32(args, size); U32(args, 0); U64(args, 0); U32(args, 0); U32(args, 0);
                if (opcode == (uint)FuseOpcode.Write)
                {
                    int data = (int)Math.Min(size, (uint)rng.Next(64));
                    rng.NextBytes(args.Slice(at, data));
                    at += data;
                }

                break;
            case FuseOpcode.Release or FuseOpcode.ReleaseDir or FuseOpcode.Flush:
                U64(args, Pick(rng, handles)); U32(args, 0); U32(args, 0); U64(args, 0);
                break;
            case FuseOpcode.Fsync or FuseOpcode.FsyncDir:
                U64(args, Pick(rng, handles)); U32(args, (uint)rng.Next(2)); U32(args, 0);
                break;
            case FuseOpcode.SetAttr:
                U32(args, (uint)rng.Next(0x800)); U32(args, 0); U64(args, Pick(rng, handles)); U64(args, SmallOffset()); U64(args, 0);
                U64(args, (ulong)rng.NextInt64()); U64(args, (ulong)rng.Next()); U64(args, 0);
                U32(args, (uint)rng.Next()); U32(args, (uint)rng.Next(1_000_000_000)); U32(args, 0);
                U32(args, (uint)rng.Next(0x10000)); U32(args, 0); U32(args, (uint)rng.Next(3)); U32(args, (uint)rng.Next(3)); U32(args, 0);
                break;
            case FuseOpcode.Lseek:
                U64(args, Pick(rng, handles)); U64(args, SmallOffset()); U32(args, (uint)rng.Next(6)); U32(args, 0);
                break;
            case FuseOpcode.Forget:
                U64(args, (ulong)rng.Next(3));
                break;
            case FuseOpcode.BatchForget:
                int count = rng.Next(4);
                U32(args, rng.Next(10) == 0 ? (uint)rng.Next() : (uint)count); U32(args, 0);
                for (int k = 0; k < count; k++)
                {
                    U64(args, Pick(rng, nodes)); U64(args, (ulong)rng.Next(3));
                }

                break;
            default:
                int extra = rng.Next(64);
                rng.NextBytes(args.Slice(0, extra));
                at = extra;
                break;
        }

        // Corruption: cut, extend, flip.
        switch (rng.Next(12))
        {
            case 0:
                at = rng.Next(at + 1);
                break;
            case 1:
                int grow = rng.Next(32);
                rng.NextBytes(args.Slice(at, grow));
                at += grow;
                break;
            case 2 when at > 0:
                args[rng.Next(at)] ^= (byte)(1 << rng.Next(8));
                break;
        }

        int length = Fuse.InHeaderSize + at;
        var header = new FuseInHeader
        {
            Length = rng.Next(40) == 0 ? (uint)rng.Next(length + 64) : (uint)length,
            Opcode = opcode,
            Unique = (ulong)rng.NextInt64(),
            NodeId = Pick(rng, nodes),
            TotalExtensionLength = rng.Next(50) == 0 ? (ushort)rng.Next(4) : (ushort)0,
        };
        MemoryMarshal.Write(message, in header);
        return length;
    }

    private static byte[] RandomName(Random rng)
    {
        var name = new byte[rng.Next(1, 12)];
        rng.NextBytes(name);
        for (int i = 0; i < name.Length; i++)
        {
            // Mostly printable, with slashes, dots and NULs left in on purpose.
            name[i] = rng.Next(4) == 0 ? (byte)"/.\0a"[rng.Next(4)] : (byte)('a' + (name[i] % 26));
        }

        return name;
    }
}
