using Virt.Memory;
using Virt.Sandbox.Loader;

namespace Virt.Sandbox.Machine;

/// <summary>
/// Places a dynamically linked program's interpreter (<c>PT_INTERP</c>, <c>ld-linux-x86-64.so.2</c>) the way Linux's
/// <c>load_elf_interp</c> does: the whole span of its segments as one private mapping taken from the top of the arena
/// (where Linux's top-down <c>mmap</c> would put it), each segment's file bytes at its offset and the rest zero. The
/// interpreter then maps the libraries itself with <c>openat</c> and <c>mmap</c>.
/// </summary>
internal static class InterpreterLoader
{
    /// <summary>Loads <paramref name="interpreter"/> into the arena and returns its base (<c>AT_BASE</c>).</summary>
    /// <exception cref="ArgumentException">The arena has no free run for it: the memory limit is too small.</exception>
    public static ulong Load(ElfImage interpreter, ArenaAllocator arena, AddressSpace space, GuestMemory memory, ulong memoryLimit)
    {
        var (low, high) = interpreter.Extent;
        ulong pages = (high - low) / GuestLayout.PageSize;
        ulong at = arena.Allocate(pages);
        if (at == 0)
        {
            throw new ArgumentException($"The memory limit ({memoryLimit} bytes) leaves no room for the program interpreter ({pages * GuestLayout.PageSize} bytes) after the stack; raise it.");
        }

        ulong loadBase = at - low;
        foreach (var s in interpreter.Segments)
        {
            if (s.FileSize > 0 && !space.TryWriteUser(loadBase + s.VirtualAddress, interpreter.File.AsSpan((int)s.FileOffset, (int)s.FileSize), memory, ignorePermissions: true))
            {
                throw new InvalidOperationException("An interpreter segment did not land in the arena.");
            }
        }

        return loadBase;
    }
}
