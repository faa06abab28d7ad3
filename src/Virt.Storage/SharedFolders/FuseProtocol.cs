using System.Runtime.InteropServices;

namespace Virt.Storage.SharedFolders;

/// <summary>FUSE request opcodes (include/uapi/linux/fuse.h, kernel ABI 7.x).</summary>
internal enum FuseOpcode : uint
{
    Lookup = 1,
    Forget = 2,
    GetAttr = 3,
    SetAttr = 4,
    ReadLink = 5,
    Symlink = 6,
    MkNod = 8,
    MkDir = 9,
    Unlink = 10,
    RmDir = 11,
    Rename = 12,
    Link = 13,
    Open = 14,
    Read = 15,
    Write = 16,
    StatFs = 17,
    Release = 18,
    Fsync = 20,
    SetXattr = 21,
    GetXattr = 22,
    ListXattr = 23,
    RemoveXattr = 24,
    Flush = 25,
    Init = 26,
    OpenDir = 27,
    ReadDir = 28,
    ReleaseDir = 29,
    FsyncDir = 30,
    GetLk = 31,
    SetLk = 32,
    SetLkW = 33,
    Access = 34,
    Create = 35,
    Interrupt = 36,
    Bmap = 37,
    Destroy = 38,
    Ioctl = 39,
    Poll = 40,
    NotifyReply = 41,
    BatchForget = 42,
    Fallocate = 43,
    ReadDirPlus = 44,
    Rename2 = 45,
    Lseek = 46,
    CopyFileRange = 47,
    SetupMapping = 48,
    RemoveMapping = 49,
    SyncFs = 50,
    TmpFile = 51,
    Statx = 52,
}

/// <summary>FUSE protocol constants: sizes, INIT flags, SETATTR valid bits, errno values (Linux numbering, which the guest uses).</summary>
internal static class Fuse
{
    public const uint KernelMajor = 7;
    /// <summary>The minor version this server speaks (7.31: max_pages, readdirplus, rename2, lseek).</summary>
    public const uint KernelMinor = 31;
    /// <summary>The minor version from which fuse_init_out has its 64-byte layout.</summary>
    public const uint MinorWithFullInitOut = 23;

    public const int InHeaderSize = 40;
    public const int OutHeaderSize = 16;
    public const int AttrSize = 88;
    public const int EntryOutSize = 128;
    public const int AttrOutSize = 104;
    public const int OpenOutSize = 16;
    public const int InitOutSize = 64;
    public const int InitOutCompatSize = 24;
    public const int DirentHeaderSize = 24;
    public const int StatfsOutSize = 80;

    /// <summary>The largest name of a directory entry (NAME_MAX).</summary>
    public const int NameMax = 255;
    /// <summary>The largest symbolic link target accepted (PATH_MAX without its NUL).</summary>
    public const int PathMax = 4095;
    /// <summary>The largest WRITE payload this server accepts, announced as max_write.</summary>
    public const int MaxWrite = 1 << 20;
    /// <summary>The largest READ it answers.</summary>
    public const int MaxRead = 1 << 20;
    /// <summary>The largest request the device reads from a descriptor chain: a WRITE header and its payload.</summary>
    public const int MaxRequest = MaxWrite + 4096;
    /// <summary>Pages per request announced with FUSE_MAX_PAGES (MaxWrite / 4 KiB).</summary>
    public const ushort MaxPages = MaxWrite / 4096;

    // INIT flags (fuse_init_in.flags / fuse_init_out.flags).
    public const uint InitAsyncRead = 1u << 0;
    public const uint InitBigWrites = 1u << 5;
    public const uint InitDoReadDirPlus = 1u << 13;
    public const uint InitParallelDirOps = 1u << 18;
    public const uint InitMaxPages = 1u << 22;

    // fuse_setattr_in.valid.
    public const uint SetAttrMode = 1 << 0;
    public const uint SetAttrUid = 1 << 1;
    public const uint SetAttrGid = 1 << 2;
    public const uint SetAttrSize = 1 << 3;
    public const uint SetAttrAtime = 1 << 4;
    public const uint SetAttrMtime = 1 << 5;
    public const uint SetAttrFh = 1 << 6;
    public const uint SetAttrAtimeNow = 1 << 7;
    public const uint SetAttrMtimeNow = 1 << 8;

    /// <summary>fuse_fsync_in.fsync_flags: data only (fdatasync).</summary>
    public const uint FsyncDataOnly = 1;

    public const int EPERM = 1;
    public const int ENOENT = 2;
    public const int EIO = 5;
    public const int EBADF = 9;
    public const int EACCES = 13;
    public const int EEXIST = 17;
    public const int ENOTDIR = 20;
    public const int EISDIR = 21;
    public const int EINVAL = 22;
    public const int ENFILE = 23;
    public const int EROFS = 30;
    public const int ENAMETOOLONG = 36;
    public const int ENOSYS = 38;
    public const int ELOOP = 40;
    public const int EPROTO = 71;
    public const int EOPNOTSUPP = 95;
    public const int ESTALE = 116;
}

/// <summary>struct fuse_in_header.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseInHeader
{
    public uint Length;
    public uint Opcode;
    public ulong Unique;
    public ulong NodeId;
    public uint Uid;
    public uint Gid;
    public uint Pid;
    public ushort TotalExtensionLength;
    public ushort Padding;
}

/// <summary>struct fuse_out_header.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseOutHeader
{
    public uint Length;
    public int Error;
    public ulong Unique;
}

/// <summary>struct fuse_init_in (the first 16 bytes every kernel sends).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseInitIn
{
    public uint Major;
    public uint Minor;
    public uint MaxReadahead;
    public uint Flags;
}

/// <summary>struct fuse_init_out.</summary>
[StructLayout(LayoutKind.Sequential, Size = Fuse.InitOutSize)]
internal struct FuseInitOut
{
    public uint Major;
    public uint Minor;
    public uint MaxReadahead;
    public uint Flags;
    public ushort MaxBackground;
    public ushort CongestionThreshold;
    public uint MaxWrite;
    public uint TimeGranularity;
    public ushort MaxPages;
    public ushort MapAlignment;
    public uint Flags2;
}

/// <summary>struct fuse_attr.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseAttr
{
    public ulong Ino;
    public ulong Size;
    public ulong Blocks;
    public ulong Atime;
    public ulong Mtime;
    public ulong Ctime;
    public uint AtimeNsec;
    public uint MtimeNsec;
    public uint CtimeNsec;
    public uint Mode;
    public uint Nlink;
    public uint Uid;
    public uint Gid;
    public uint Rdev;
    public uint BlockSize;
    public uint Flags;
}

/// <summary>struct fuse_entry_out.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseEntryOut
{
    public ulong NodeId;
    public ulong Generation;
    public ulong EntryValid;
    public ulong AttrValid;
    public uint EntryValidNsec;
    public uint AttrValidNsec;
    public FuseAttr Attr;
}

/// <summary>struct fuse_attr_out.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseAttrOut
{
    public ulong AttrValid;
    public uint AttrValidNsec;
    public uint Dummy;
    public FuseAttr Attr;
}

/// <summary>struct fuse_getattr_in.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseGetAttrIn
{
    public uint Flags;
    public uint Dummy;
    public ulong Fh;
}

/// <summary>struct fuse_setattr_in.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseSetAttrIn
{
    public uint Valid;
    public uint Padding;
    public ulong Fh;
    public ulong Size;
    public ulong LockOwner;
    public ulong Atime;
    public ulong Mtime;
    public ulong Ctime;
    public uint AtimeNsec;
    public uint MtimeNsec;
    public uint CtimeNsec;
    public uint Mode;
    public uint Unused4;
    public uint Uid;
    public uint Gid;
    public uint Unused5;
}

/// <summary>struct fuse_forget_in.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseForgetIn
{
    public ulong Nlookup;
}

/// <summary>struct fuse_batch_forget_in.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseBatchForgetIn
{
    public uint Count;
    public uint Dummy;
}

/// <summary>struct fuse_forget_one.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseForgetOne
{
    public ulong NodeId;
    public ulong Nlookup;
}

/// <summary>struct fuse_mknod_in.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseMkNodIn
{
    public uint Mode;
    public uint Rdev;
    public uint Umask;
    public uint Padding;
}

/// <summary>struct fuse_mkdir_in.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseMkDirIn
{
    public uint Mode;
    public uint Umask;
}

/// <summary>struct fuse_rename_in.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseRenameIn
{
    public ulong NewDir;
}

/// <summary>struct fuse_rename2_in.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseRename2In
{
    public ulong NewDir;
    public uint Flags;
    public uint Padding;
}

/// <summary>struct fuse_link_in.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseLinkIn
{
    public ulong OldNodeId;
}

/// <summary>struct fuse_open_in.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseOpenIn
{
    public uint Flags;
    public uint OpenFlags;
}

/// <summary>struct fuse_create_in.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseCreateIn
{
    public uint Flags;
    public uint Mode;
    public uint Umask;
    public uint OpenFlags;
}

/// <summary>struct fuse_open_out.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseOpenOut
{
    public ulong Fh;
    public uint OpenFlags;
    public uint Padding;
}

/// <summary>struct fuse_release_in.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseReleaseIn
{
    public ulong Fh;
    public uint Flags;
    public uint ReleaseFlags;
    public ulong LockOwner;
}

/// <summary>struct fuse_read_in (and fuse_write_in, which has the same layout).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseIoIn
{
    public ulong Fh;
    public ulong Offset;
    public uint Size;
    public uint IoFlags;
    public ulong LockOwner;
    public uint Flags;
    public uint Padding;
}

/// <summary>struct fuse_write_out.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseWriteOut
{
    public uint Size;
    public uint Padding;
}

/// <summary>struct fuse_fsync_in.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseFsyncIn
{
    public ulong Fh;
    public uint FsyncFlags;
    public uint Padding;
}

/// <summary>struct fuse_lseek_in.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseLseekIn
{
    public ulong Fh;
    public ulong Offset;
    public uint Whence;
    public uint Padding;
}

/// <summary>struct fuse_kstatfs (the payload of fuse_statfs_out).</summary>
[StructLayout(LayoutKind.Sequential, Size = Fuse.StatfsOutSize)]
internal struct FuseStatfsOut
{
    public ulong Blocks;
    public ulong BlocksFree;
    public ulong BlocksAvailable;
    public ulong Files;
    public ulong FilesFree;
    public uint BlockSize;
    public uint NameLength;
    public uint FragmentSize;
    public uint Padding;
}
