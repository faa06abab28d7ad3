using Virt.X86;

namespace Virt.Sandbox.Machine;

/// <summary>
/// Where things live in a sandbox's guest physical and virtual address spaces. The supervisor pages are
/// mapped only in the top 2 GiB (like a Linux kernel) and never with the user bit; the program's
/// segments sit at their ELF addresses; everything else is the arena (heap, mmap, stack).
/// </summary>
internal static class GuestLayout
{
    /// <summary>Bytes in a page.</summary>
    public const ulong PageSize = PageTable.PageSize;

    /// <summary>Physical page holding the GDT (first 0x40 bytes) and the TSS (at <see cref="TssOffset"/>).</summary>
    public const ulong GdtPhysical = 0x1000;

    /// <summary>Offset of the 64-bit TSS inside the GDT page.</summary>
    public const ulong TssOffset = 0x100;

    /// <summary>Physical page holding the IDT (32 gates of 16 bytes).</summary>
    public const ulong IdtPhysical = 0x2000;

    /// <summary>Physical page holding the supervisor stub code.</summary>
    public const ulong CodePhysical = 0x3000;

    /// <summary>Physical page used as the exception stack (IST1 and RSP0); the top is the next page.</summary>
    public const ulong StackPhysical = 0x4000;

    /// <summary>Physical page of the system-call trampoline (LSTAR points at it; see <see cref="Supervisor"/>).</summary>
    public const ulong TrampolinePhysical = 0x5000;

    /// <summary>First physical page of the page-table pool.</summary>
    public const ulong PageTablePhysical = 0x6000;

    /// <summary>Virtual address of the vDSO image (<c>AT_SYSINFO_EHDR</c>): the start of the last user page, read-only and executable.</summary>
    public const ulong VdsoAddress = 0x7FFF_FFFF_F000;

    /// <summary>Virtual address of the trampoline: the second half of the vDSO's page.</summary>
    public const ulong TrampolineAddress = VdsoAddress + 0x800;

    /// <summary>Where the trampoline continues after the doorbell read: <c>jmp rcx</c> (after the 10-byte <c>mov rax, [moffs64]</c>).</summary>
    public const ulong TrampolineReturn = TrampolineAddress + 10;

    /// <summary>Virtual address of the doorbell page (user-readable, backed by no RAM).</summary>
    public const ulong DoorbellAddress = 0x7FFF_FFFF_E000;

    /// <summary>Guest physical address of the doorbell: outside RAM, so a read of it is an MMIO exit.</summary>
    public const ulong DoorbellPhysical = 1UL << 36;

    /// <summary>GDT selector base for SYSRET-style selector pairs: STAR[63:48]; user SS = +8, user CS = +16.</summary>
    public const ushort SysretBase = 0x18;

    /// <summary>Virtual address at which physical address 0 of the supervisor pages is mapped.</summary>
    public const ulong SupervisorBase = 0xFFFF_FFFF_8000_0000;

    /// <summary>Lowest virtual address of the arena (heap, anonymous mappings and the stack).</summary>
    public const ulong ArenaBase = 0x7000_0000_0000;

    /// <summary>
    /// Unmapped gap between the heap and the stack (Linux's default <c>stack_guard_gap</c>, 256 pages): a program
    /// that runs off the end of its stack faults here instead of writing into the heap.
    /// </summary>
    public const ulong StackGuardBytes = 1UL << 20;

    /// <summary>Number of interrupt vectors that have a gate (the architectural exceptions).</summary>
    public const int ExceptionVectors = ExceptionVector.Count;

    /// <summary>GDT selector: 64-bit kernel code (the IDT gates' target).</summary>
    public const ushort KernelCode = 0x08;

    /// <summary>GDT selector: kernel data.</summary>
    public const ushort KernelData = 0x10;

    /// <summary>GDT selector: user data, RPL 3.</summary>
    public const ushort UserData = 0x20 | 3;

    /// <summary>GDT selector: 64-bit user code, RPL 3.</summary>
    public const ushort UserCode = 0x28 | 3;

    /// <summary>GDT selector: the TSS (two slots).</summary>
    public const ushort TssSelector = 0x30;

    /// <summary>Port base for exception stubs: vector v writes to this plus v.</summary>
    public const ushort ExceptionPortBase = 0xA0;

    /// <summary>Offset of the <c>iretq</c> every stub ends in, and where the host resumes the vCPU after a system call.</summary>
    public const ulong ResumeOffset = 0;

    /// <summary>Offset of the stub for exception vector 0; vector v is at this plus v times <see cref="ExceptionStubStride"/>.</summary>
    public const ulong ExceptionStubOffset = 0x40;

    /// <summary>Bytes between exception stubs.</summary>
    public const ulong ExceptionStubStride = 8;

    /// <summary>Virtual address of the shared <c>iretq</c>.</summary>
    public const ulong ResumeAddress = SupervisorBase + CodePhysical + ResumeOffset;

    /// <summary>Exception vector of #UD, which <c>syscall</c> raises where the CPU honours EFER.SCE = 0.</summary>
    public const int InvalidOpcodeVector = ExceptionVector.InvalidOpcode;

    /// <summary>Virtual top of the exception stack.</summary>
    public const ulong ExceptionStackTop = SupervisorBase + StackPhysical + PageSize;

    /// <summary>Whether <paramref name="address"/> is a canonical user-half address (below 2^47).</summary>
    public static bool IsUserCanonical(ulong address) => LinearAddress.IsLowerHalf(address);

    /// <summary>Whether <paramref name="address"/> is canonical (bits 63-47 all equal).</summary>
    public static bool IsCanonical(ulong address) => LinearAddress.IsCanonical(address);
}
