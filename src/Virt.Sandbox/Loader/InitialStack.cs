using System.Buffers.Binary;
using System.Text;

namespace Virt.Sandbox.Loader;

/// <summary>Auxiliary-vector keys (<c>AT_*</c>, linux/auxvec.h).</summary>
internal static class AuxKey
{
    /// <summary>End of the vector.</summary>
    public const ulong Null = 0;
    /// <summary>Address of the program headers.</summary>
    public const ulong Phdr = 3;
    /// <summary>Size of one program header.</summary>
    public const ulong Phent = 4;
    /// <summary>Number of program headers.</summary>
    public const ulong Phnum = 5;
    /// <summary>Page size.</summary>
    public const ulong Pagesz = 6;
    /// <summary>Interpreter base (0: none).</summary>
    public const ulong Base = 7;
    /// <summary>Flags (0).</summary>
    public const ulong Flags = 8;
    /// <summary>Program entry point.</summary>
    public const ulong Entry = 9;
    /// <summary>Real user id.</summary>
    public const ulong Uid = 11;
    /// <summary>Effective user id.</summary>
    public const ulong Euid = 12;
    /// <summary>Real group id.</summary>
    public const ulong Gid = 13;
    /// <summary>Effective group id.</summary>
    public const ulong Egid = 14;
    /// <summary>Address of the platform string.</summary>
    public const ulong Platform = 15;
    /// <summary>CPUID.1:EDX.</summary>
    public const ulong Hwcap = 16;
    /// <summary>Clock ticks per second for times().</summary>
    public const ulong Clktck = 17;
    /// <summary>Secure mode (setuid): 0.</summary>
    public const ulong Secure = 23;
    /// <summary>Address of 16 random bytes.</summary>
    public const ulong Random = 25;
    /// <summary>More hardware capabilities (0).</summary>
    public const ulong Hwcap2 = 26;
    /// <summary>Address of the vDSO's ELF header.</summary>
    public const ulong SysinfoEhdr = 33;
    /// <summary>Address of the executable's path.</summary>
    public const ulong Execfn = 31;
}

/// <summary>
/// Lays out the process entry stack of the x86-64 psABI (3.4.1) and Linux's <c>create_elf_tables</c>:
/// argc, argv pointers, NULL, envp pointers, NULL, auxv pairs, AT_NULL, then the strings and random bytes
/// above them. RSP (pointing at argc) is 16-byte aligned.
/// </summary>
internal static class InitialStack
{
    /// <summary>The stack image to copy to <c>[Rsp, top)</c>, and the entry RSP.</summary>
    public sealed record Layout(ulong Rsp, byte[] Bytes);

    /// <summary>Builds the stack ending at <paramref name="top"/>.</summary>
    /// <exception cref="ArgumentException">The arguments and environment do not fit in <paramref name="maxBytes"/>.</exception>
    public static Layout Build(ulong top, IReadOnlyList<string> argv, IReadOnlyList<string> envp, string execFn,
        ReadOnlySpan<byte> random16, IReadOnlyList<(ulong Key, ulong Value)> aux, int maxBytes)
    {
        // Strings first, from the top down (argv[0] highest, as Linux does not promise an order).
        var strings = new List<byte>();
        var argvOffsets = new List<int>();
        var envOffsets = new List<int>();
        int Add(string s)
        {
            int at = strings.Count;
            strings.AddRange(Encoding.UTF8.GetBytes(s));
            strings.Add(0);
            return at;
        }

        foreach (var a in argv)
        {
            argvOffsets.Add(Add(a));
        }

        foreach (var e in envp)
        {
            envOffsets.Add(Add(e));
        }

        int execFnOffset = Add(execFn);
        int platformOffset = Add("x86_64");
        int randomOffset = strings.Count;
        strings.AddRange(random16.ToArray());
        while (strings.Count % 16 != 0)
        {
            strings.Add(0);
        }

        ulong stringBase = top - 16 - (ulong)strings.Count; // 16 bytes of zero guard at the very top
        int auxCount = aux.Count + 3; // + AT_RANDOM, AT_EXECFN, AT_PLATFORM; AT_NULL below
        int words = 1 + argv.Count + 1 + envp.Count + 1 + ((auxCount + 1) * 2);
        ulong rsp = (stringBase - ((ulong)words * 8)) & ~0xFUL;
        ulong total = top - rsp;
        if (total > (ulong)maxBytes)
        {
            throw new ArgumentException($"Arguments and environment need {total} bytes of stack; the limit is {maxBytes}. Shorten them or raise the stack size.");
        }

        var bytes = new byte[total];
        strings.CopyTo(bytes, (int)(stringBase - rsp));
        int pos = 0;
        void Word(ulong value)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(pos), value);
            pos += 8;
        }

        Word((ulong)argv.Count);
        foreach (int o in argvOffsets)
        {
            Word(stringBase + (ulong)o);
        }

        Word(0);
        foreach (int o in envOffsets)
        {
            Word(stringBase + (ulong)o);
        }

        Word(0);
        foreach (var (k, v) in aux)
        {
            Word(k);
            Word(v);
        }

        Word(AuxKey.Random);
        Word(stringBase + (ulong)randomOffset);
        Word(AuxKey.Execfn);
        Word(stringBase + (ulong)execFnOffset);
        Word(AuxKey.Platform);
        Word(stringBase + (ulong)platformOffset);
        Word(AuxKey.Null);
        Word(0);
        return new Layout(rsp, bytes);
    }
}
