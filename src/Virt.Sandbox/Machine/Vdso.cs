using System.Buffers.Binary;
using System.Text;

namespace Virt.Sandbox.Machine;

/// <summary>
/// The virtual dynamic shared object every program finds through <c>AT_SYSINFO_EHDR</c>: a small ELF shared object
/// built once, at the start of the trampoline page, exporting what the x86-64 kernel's vDSO exports under version
/// <c>LINUX_2.6</c> (<c>__vdso_clock_gettime</c>, <c>__vdso_gettimeofday</c>, <c>__vdso_time</c>, <c>__vdso_getcpu</c>,
/// <c>__vdso_clock_getres</c>). The clock functions make the system call (the fallback the kernel's vDSO takes too);
/// <c>getcpu</c> answers without one: the sandbox has one CPU and one node.
/// </summary>
/// <remarks>
/// The image is linked at its load address (its one <c>PT_LOAD</c> has <c>p_vaddr</c> = the page address), so a loader's
/// load bias is 0 and nothing writes to the read-only <c>.dynamic</c>. glibc (static and dynamic), musl and Go find
/// symbols through <c>DT_HASH</c> and check versions through <c>DT_VERSYM</c>/<c>DT_VERDEF</c>, which the image has;
/// it has no section headers, which none of them read.
/// </remarks>
internal static class Vdso
{
    /// <summary>Bytes the image may use: the trampoline sits after them in the same page.</summary>
    public const int MaxSize = (int)(GuestLayout.TrampolineAddress - GuestLayout.VdsoAddress);

    /// <summary>The symbols, their system call (-1: answered in user mode).</summary>
    private static readonly (string Name, int Syscall)[] Functions =
    [
        ("__vdso_clock_gettime", 228),
        ("__vdso_gettimeofday", 96),
        ("__vdso_time", 201),
        ("__vdso_clock_getres", 229),
        ("__vdso_getcpu", -1),
    ];

    private const string SoName = "linux-vdso.so.1";
    private const string Version = "LINUX_2.6";

    private static readonly Lazy<byte[]> Built = new(() => Build(GuestLayout.VdsoAddress));

    /// <summary>The image for <see cref="GuestLayout.VdsoAddress"/>.</summary>
    public static ReadOnlySpan<byte> Image => Built.Value;

    /// <summary>The names the image exports.</summary>
    public static IEnumerable<string> Symbols => Functions.Select(f => f.Name);

    /// <summary>The SysV ELF hash (the <c>DT_HASH</c> and <c>vd_hash</c> function).</summary>
    public static uint ElfHash(string name)
    {
        uint h = 0;
        foreach (byte c in Encoding.ASCII.GetBytes(name))
        {
            h = (h << 4) + c;
            uint g = h & 0xF000_0000;
            if (g != 0)
            {
                h ^= g >> 24;
            }

            h &= ~g;
        }

        return h;
    }

    /// <summary>Builds the image linked at <paramref name="baseAddress"/>.</summary>
    public static byte[] Build(ulong baseAddress)
    {
        var image = new byte[MaxSize];
        var span = image.AsSpan();

        // String table.
        var strings = new List<byte> { 0 };
        int AddString(string s)
        {
            int at = strings.Count;
            strings.AddRange(Encoding.ASCII.GetBytes(s));
            strings.Add(0);
            return at;
        }

        int soName = AddString(SoName);
        int version = AddString(Version);
        int[] names = [.. Functions.Select(f => AddString(f.Name))];

        int symbolCount = Functions.Length + 1;
        const int PhdrCount = 2;
        int offset = 64 + (PhdrCount * 56);
        int hashOffset = offset;
        int buckets = symbolCount;
        offset += (2 + buckets + symbolCount) * 4;
        int symtabOffset = Align(offset, 8);
        offset = symtabOffset + (symbolCount * 24);
        int versymOffset = offset;
        offset += symbolCount * 2;
        int verdefOffset = Align(offset, 4);
        offset = verdefOffset + (2 * 28);
        int strtabOffset = offset;
        offset += strings.Count;
        int dynamicOffset = Align(offset, 8);
        const int DynamicCount = 10;
        offset = dynamicOffset + (DynamicCount * 16);
        int textOffset = Align(offset, 16);

        // Code: one small function each, 16-byte aligned.
        var code = new List<byte>();
        var entries = new (int Offset, int Size)[Functions.Length];
        for (int i = 0; i < Functions.Length; i++)
        {
            while (code.Count % 16 != 0)
            {
                code.Add(0xCC);
            }

            int start = code.Count;
            if (Functions[i].Syscall >= 0)
            {
                code.Add(0xB8); // mov eax, imm32
                code.AddRange(BitConverter.GetBytes(Functions[i].Syscall));
                code.AddRange([0x0F, 0x05, 0xC3]); // syscall; ret
            }
            else
            {
                // getcpu(cpu, node, cache): *cpu = 0 and *node = 0 where given; return 0.
                code.AddRange([0x48, 0x85, 0xFF, 0x74, 0x06, 0xC7, 0x07, 0, 0, 0, 0]); // test rdi,rdi; jz +6; mov dword [rdi],0
                code.AddRange([0x48, 0x85, 0xF6, 0x74, 0x06, 0xC7, 0x06, 0, 0, 0, 0]); // test rsi,rsi; jz +6; mov dword [rsi],0
                code.AddRange([0x31, 0xC0, 0xC3]); // xor eax,eax; ret
            }

            entries[i] = (textOffset + start, code.Count - start);
        }

        int end = textOffset + code.Count;
        if (end > MaxSize)
        {
            throw new InvalidOperationException("The vDSO image does not fit before the trampoline.");
        }

        ulong At(int o) => baseAddress + (ulong)o;

        // ELF header.
        span[0] = 0x7F;
        span[1] = (byte)'E';
        span[2] = (byte)'L';
        span[3] = (byte)'F';
        span[4] = 2; // ELFCLASS64
        span[5] = 1; // little endian
        span[6] = 1; // EV_CURRENT
        BinaryPrimitives.WriteUInt16LittleEndian(span[16..], 3); // ET_DYN
        BinaryPrimitives.WriteUInt16LittleEndian(span[18..], 62); // EM_X86_64
        BinaryPrimitives.WriteUInt32LittleEndian(span[20..], 1);
        BinaryPrimitives.WriteUInt64LittleEndian(span[32..], 64); // e_phoff
        BinaryPrimitives.WriteUInt16LittleEndian(span[52..], 64); // e_ehsize
        BinaryPrimitives.WriteUInt16LittleEndian(span[54..], 56); // e_phentsize
        BinaryPrimitives.WriteUInt16LittleEndian(span[56..], PhdrCount);
        BinaryPrimitives.WriteUInt16LittleEndian(span[58..], 64); // e_shentsize (no section headers)

        // PT_LOAD (R+X) over the whole image, then PT_DYNAMIC.
        WritePhdr(span[64..], 1, 5, 0, At(0), (ulong)end, 0x1000);
        WritePhdr(span[120..], 2, 4, (ulong)dynamicOffset, At(dynamicOffset), DynamicCount * 16, 8);

        // Symbols: index 0 is the null symbol.
        for (int i = 0; i < Functions.Length; i++)
        {
            var sym = span[(symtabOffset + ((i + 1) * 24))..];
            BinaryPrimitives.WriteUInt32LittleEndian(sym, (uint)names[i]);
            sym[4] = 0x12; // STB_GLOBAL, STT_FUNC
            BinaryPrimitives.WriteUInt16LittleEndian(sym[6..], 1); // defined (any index but SHN_UNDEF)
            BinaryPrimitives.WriteUInt64LittleEndian(sym[8..], At(entries[i].Offset));
            BinaryPrimitives.WriteUInt64LittleEndian(sym[16..], (ulong)entries[i].Size);
            BinaryPrimitives.WriteUInt16LittleEndian(span[(versymOffset + ((i + 1) * 2))..], 2); // LINUX_2.6
        }

        // DT_HASH: nbucket, nchain, buckets, chains.
        BinaryPrimitives.WriteUInt32LittleEndian(span[hashOffset..], (uint)buckets);
        BinaryPrimitives.WriteUInt32LittleEndian(span[(hashOffset + 4)..], (uint)symbolCount);
        var bucketHeads = new uint[buckets];
        var chains = new uint[symbolCount];
        for (int i = symbolCount - 1; i >= 1; i--)
        {
            uint b = ElfHash(Functions[i - 1].Name) % (uint)buckets;
            chains[i] = bucketHeads[b];
            bucketHeads[b] = (uint)i;
        }

        for (int b = 0; b < buckets; b++)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(span[(hashOffset + 8 + (b * 4))..], bucketHeads[b]);
        }

        for (int i = 0; i < symbolCount; i++)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(span[(hashOffset + 8 + (buckets * 4) + (i * 4))..], chains[i]);
        }

        // Version definitions: 1 is the object itself (VER_FLG_BASE), 2 is LINUX_2.6.
        WriteVerdef(span[verdefOffset..], flags: 1, index: 1, ElfHash(SoName), soName, next: 28);
        WriteVerdef(span[(verdefOffset + 28)..], flags: 0, index: 2, ElfHash(Version), version, next: 0);

        strings.ToArray().CopyTo(span[strtabOffset..]);

        (long Tag, ulong Value)[] dynamic =
        [
            (4, At(hashOffset)), // DT_HASH
            (5, At(strtabOffset)), // DT_STRTAB
            (6, At(symtabOffset)), // DT_SYMTAB
            (10, (ulong)strings.Count), // DT_STRSZ
            (11, 24), // DT_SYMENT
            (14, (ulong)soName), // DT_SONAME
            (0x6FFF_FFF0, At(versymOffset)), // DT_VERSYM
            (0x6FFF_FFFC, At(verdefOffset)), // DT_VERDEF
            (0x6FFF_FFFD, 2), // DT_VERDEFNUM
            (0, 0), // DT_NULL
        ];
        for (int i = 0; i < dynamic.Length; i++)
        {
            BinaryPrimitives.WriteInt64LittleEndian(span[(dynamicOffset + (i * 16))..], dynamic[i].Tag);
            BinaryPrimitives.WriteUInt64LittleEndian(span[(dynamicOffset + (i * 16) + 8)..], dynamic[i].Value);
        }

        code.ToArray().CopyTo(span[textOffset..]);
        return image;
    }

    private static int Align(int value, int alignment) => (value + alignment - 1) & ~(alignment - 1);

    private static void WritePhdr(Span<byte> p, uint type, uint flags, ulong offset, ulong address, ulong size, ulong align)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(p, type);
        BinaryPrimitives.WriteUInt32LittleEndian(p[4..], flags);
        BinaryPrimitives.WriteUInt64LittleEndian(p[8..], offset);
        BinaryPrimitives.WriteUInt64LittleEndian(p[16..], address);
        BinaryPrimitives.WriteUInt64LittleEndian(p[24..], address);
        BinaryPrimitives.WriteUInt64LittleEndian(p[32..], size);
        BinaryPrimitives.WriteUInt64LittleEndian(p[40..], size);
        BinaryPrimitives.WriteUInt64LittleEndian(p[48..], align);
    }

    private static void WriteVerdef(Span<byte> d, ushort flags, ushort index, uint hash, int name, uint next)
    {
        BinaryPrimitives.WriteUInt16LittleEndian(d, 1); // VER_DEF_CURRENT
        BinaryPrimitives.WriteUInt16LittleEndian(d[2..], flags);
        BinaryPrimitives.WriteUInt16LittleEndian(d[4..], index);
        BinaryPrimitives.WriteUInt16LittleEndian(d[6..], 1); // one Verdaux
        BinaryPrimitives.WriteUInt32LittleEndian(d[8..], hash);
        BinaryPrimitives.WriteUInt32LittleEndian(d[12..], 20); // vd_aux
        BinaryPrimitives.WriteUInt32LittleEndian(d[16..], next);
        BinaryPrimitives.WriteUInt32LittleEndian(d[20..], (uint)name); // vda_name
        BinaryPrimitives.WriteUInt32LittleEndian(d[24..], 0); // vda_next
    }
}
