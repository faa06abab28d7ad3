namespace Virt.X86;

/// <summary><c>e_ident[EI_CLASS]</c>: the width of the file's addresses and offsets.</summary>
public enum ElfClass
{
    /// <summary>ELFCLASS32 (1): 32-bit addresses and offsets, 52-byte header, 32-byte program headers.</summary>
    Elf32 = 1,

    /// <summary>ELFCLASS64 (2): 64-bit addresses and offsets, 64-byte header, 56-byte program headers.</summary>
    Elf64 = 2,
}

/// <summary><c>e_type</c>: what kind of object the file is.</summary>
public enum ElfFileType
{
    /// <summary>ET_NONE (0).</summary>
    None = 0,

    /// <summary>ET_REL (1): a relocatable object (<c>.o</c>).</summary>
    Relocatable = 1,

    /// <summary>ET_EXEC (2): an executable at fixed addresses.</summary>
    Executable = 2,

    /// <summary>ET_DYN (3): a shared object or a position-independent executable.</summary>
    SharedObject = 3,

    /// <summary>ET_CORE (4): a core dump.</summary>
    Core = 4,
}

/// <summary><c>e_machine</c> values for x86.</summary>
public static class ElfMachine
{
    /// <summary>EM_386 (3): 32-bit x86.</summary>
    public const ushort I386 = 3;

    /// <summary>EM_X86_64 (62): x86-64.</summary>
    public const ushort X64 = 62;
}

/// <summary><c>p_type</c>: what a program header describes.</summary>
public enum ElfSegmentType : uint
{
    /// <summary>PT_NULL (0): unused entry.</summary>
    Null = 0,

    /// <summary>PT_LOAD (1): bytes to map at <c>p_vaddr</c> (or <c>p_paddr</c> for a kernel), zero-filled past <c>p_filesz</c>.</summary>
    Load = 1,

    /// <summary>PT_DYNAMIC (2): the dynamic-linking table.</summary>
    Dynamic = 2,

    /// <summary>PT_INTERP (3): the path of the program interpreter (the dynamic linker), NUL-terminated.</summary>
    Interpreter = 3,

    /// <summary>PT_NOTE (4): a sequence of notes (name, type, descriptor).</summary>
    Note = 4,

    /// <summary>PT_SHLIB (5): reserved.</summary>
    SharedLibrary = 5,

    /// <summary>PT_PHDR (6): where the program headers themselves are mapped (for <c>AT_PHDR</c>).</summary>
    ProgramHeaders = 6,

    /// <summary>PT_TLS (7): the thread-local storage template.</summary>
    Tls = 7,

    /// <summary>PT_GNU_EH_FRAME: the exception-handling frame index.</summary>
    GnuEhFrame = 0x6474_E550,

    /// <summary>PT_GNU_STACK: its <c>p_flags</c> say whether the stack must be executable.</summary>
    GnuStack = 0x6474_E551,

    /// <summary>PT_GNU_RELRO: made read-only after relocation.</summary>
    GnuRelro = 0x6474_E552,

    /// <summary>PT_GNU_PROPERTY: the <c>.note.gnu.property</c> notes (CET, ISA level).</summary>
    GnuProperty = 0x6474_E553,
}

/// <summary><c>p_flags</c>: a segment's access rights.</summary>
[Flags]
public enum ElfSegmentFlags : uint
{
    /// <summary>No access.</summary>
    None = 0,

    /// <summary>PF_X (1): executable.</summary>
    Execute = 1,

    /// <summary>PF_W (2): writable.</summary>
    Write = 2,

    /// <summary>PF_R (4): readable.</summary>
    Read = 4,
}
