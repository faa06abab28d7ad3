using Iced.Intel;
using Virt.Cpu;
using Virt.Memory;

namespace Virt.Sandbox.Machine;

/// <summary>
/// The CPL 0 side of a sandbox: GDT, TSS, IDT, one two-instruction stub per exception vector (<c>out</c>
/// to the vector's port, which is one exit, then a jump to a shared <c>iretq</c>), and a CPL 3 system-call
/// trampoline. System calls reach the host one of two ways, with no privileged code of ours in between
/// where the CPU allows it:
/// <list type="bullet">
/// <item>EFER.SCE is clear, so on hardware (and any CPU that honours it) <c>syscall</c> raises #UD; the #UD
/// stub exits, the host sees <c>0F 05</c> at the frame's RIP, serves the call, steps the frame past it and
/// resumes at the <c>iretq</c>.</item>
/// <item>PVM-style KVMs ignore SCE and jump to LSTAR without leaving CPL 3. LSTAR is the trampoline, a
/// user page holding <c>mov rax, [doorbell]; jmp rcx</c>: the read of the doorbell (a page backed by no
/// RAM) is an MMIO exit, the host answers it with the result, which lands in RAX, and the program
/// continues at RCX, the return address SYSCALL saved. One exit, no CPL 0 instruction, no register write.</item>
/// </list>
/// Every stub's <c>out</c> leads to the same <c>iretq</c>, and every doorbell read to the same
/// <c>jmp rcx</c>, so however a backend completes a pending exit after the host restored a snapshot taken
/// at the same kind of exit, the vCPU continues the way the host set it up.
/// </summary>
internal static class Supervisor
{
    /// <summary>RFLAGS for the program's first instruction: IF and the reserved bit 1.</summary>
    public const ulong InitialUserFlags = 0x202;

    private const ulong Cr0Pe = 1UL << 0, Cr0Mp = 1UL << 1, Cr0Et = 1UL << 4, Cr0Ne = 1UL << 5, Cr0Wp = 1UL << 16, Cr0Pg = 1UL << 31;
    private const ulong Cr4Pae = 1UL << 5, Cr4OsFxsr = 1UL << 9, Cr4OsXmmExcpt = 1UL << 10;
    /// <summary>RFLAGS bits cleared on SYSCALL: none, so a trampoline-path call keeps the program's flags as Linux does.</summary>
    public const ulong SyscallFlagMask = 0;

    /// <summary>RFLAGS bits a return to CPL 3 keeps from the program's R11: CF, PF, AF, ZF, SF, TF, DF, OF, AC, ID (never IOPL, NT, RF, VM, VIF, VIP).</summary>
    public const ulong UserFlagsMask = 0x240DD5;

    private const ulong EferLme = 1UL << 8, EferLma = 1UL << 10, EferNxe = 1UL << 11;

    /// <summary>Interrupt gate, present, DPL 0 (type byte of an IDT entry).</summary>
    private const byte GateKernel = 0x8E;

    /// <summary>Interrupt gate, present, DPL 3: <c>int3</c>/<c>into</c> from user mode report their own vector.</summary>
    private const byte GateUser = 0xEE;

    /// <summary>IST slot every gate uses, so an exception always lands on the supervisor's own stack.</summary>
    private const byte IstIndex = 1;

    private static readonly Lazy<byte[]> Code = new(AssembleCode);
    private static readonly Lazy<byte[]> Trampoline = new(AssembleTrampoline);

    /// <summary>Vectors that push an error code (#DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP, #VC, #SX).</summary>
    public static bool HasErrorCode(int vector) => vector is 8 or 10 or 11 or 12 or 13 or 14 or 17 or 21 or 29 or 30;

    /// <summary>Writes GDT, TSS, IDT and stub code into their supervisor pages.</summary>
    public static void Install(GuestMemory memory)
    {
        ulong tssVirtual = GuestLayout.SupervisorBase + GuestLayout.GdtPhysical + GuestLayout.TssOffset;
        Span<ulong> gdt =
        [
            0,
            0x00AF9B000000FFFF, // 0x08 kernel code 64 (accessed bit preset: the CPU never writes the GDT)
            0x00CF93000000FFFF, // 0x10 kernel data
            0x00CFFB000000FFFF, // 0x18 user code 32 (STAR base for SYSRET; never loaded)
            0x00CFF3000000FFFF, // 0x20 user data
            0x00AFFB000000FFFF, // 0x28 user code 64
            0x67 | ((tssVirtual & 0xFFFFFF) << 16) | (0x8BUL << 40) | (((tssVirtual >> 24) & 0xFF) << 56),
            tssVirtual >> 32,
        ];
        for (int i = 0; i < gdt.Length; i++)
        {
            memory.Write(new GuestAddress(GuestLayout.GdtPhysical + (ulong)(i * 8)), gdt[i]);
        }

        var tss = new GuestAddress(GuestLayout.GdtPhysical + GuestLayout.TssOffset);
        memory.Write(tss + 4, GuestLayout.ExceptionStackTop); // RSP0
        memory.Write(tss + 0x24, GuestLayout.ExceptionStackTop); // IST1
        memory.Write(tss + 0x66, (ushort)0x68); // I/O bitmap base past the limit: every port is denied at CPL 3

        for (int v = 0; v < GuestLayout.ExceptionVectors; v++)
        {
            ulong handler = GuestLayout.SupervisorBase + GuestLayout.CodePhysical + GuestLayout.ExceptionStubOffset + ((ulong)v * GuestLayout.ExceptionStubStride);
            byte type = v is 3 or 4 ? GateUser : GateKernel;
            ulong low = (handler & 0xFFFF) | ((ulong)GuestLayout.KernelCode << 16) | ((ulong)IstIndex << 32) | ((ulong)type << 40) | (((handler >> 16) & 0xFFFF) << 48);
            memory.Write(new GuestAddress(GuestLayout.IdtPhysical + (ulong)(v * 16)), low);
            memory.Write(new GuestAddress(GuestLayout.IdtPhysical + (ulong)(v * 16) + 8), handler >> 32);
        }

        memory.Write(new GuestAddress(GuestLayout.CodePhysical), Code.Value);
        memory.Write(new GuestAddress(GuestLayout.TrampolinePhysical), Trampoline.Value);
    }

    /// <summary>The SYSCALL MSRs: STAR (selectors), LSTAR (the trampoline), FMASK (flags cleared on entry).</summary>
    public static MsrEntry[] SyscallMsrs() =>
    [
        new(MsrIndex.Star, ((ulong)GuestLayout.SysretBase << 48) | ((ulong)GuestLayout.KernelCode << 32)),
        new(MsrIndex.Lstar, GuestLayout.TrampolineAddress),
        new(MsrIndex.Fmask, SyscallFlagMask),
    ];

    /// <summary>The stub code page contents (for tests and diagnostics).</summary>
    public static ReadOnlySpan<byte> CodeBytes => Code.Value;

    /// <summary>Segment, table and control registers for the program's first instruction at CPL 3.</summary>
    public static SpecialRegisters UserStart(SpecialRegisters current, ulong cr3)
    {
        var s = current;
        s.Cs = SegmentRegister.Flat(GuestLayout.UserCode, code: true, longMode: true, dpl: 3);
        s.Ds = s.Es = s.Ss = s.Fs = s.Gs = SegmentRegister.Flat(GuestLayout.UserData, code: false, longMode: false, dpl: 3);
        s.Fs.Base = 0;
        s.Gs.Base = 0;
        s.Tr = new SegmentRegister
        {
            Base = GuestLayout.SupervisorBase + GuestLayout.GdtPhysical + GuestLayout.TssOffset, Limit = 0x67,
            Selector = GuestLayout.TssSelector, Type = 0xB, Present = true,
        };
        s.Ldt = new SegmentRegister { Unusable = true, Type = 2 };
        s.Gdt = new DescriptorTable { Base = GuestLayout.SupervisorBase + GuestLayout.GdtPhysical, Limit = 0x3F };
        s.Idt = new DescriptorTable { Base = GuestLayout.SupervisorBase + GuestLayout.IdtPhysical, Limit = (GuestLayout.ExceptionVectors * 16) - 1 };
        s.Cr0 = Cr0Pe | Cr0Mp | Cr0Et | Cr0Ne | Cr0Wp | Cr0Pg;
        s.Cr2 = 0;
        s.Cr3 = cr3;
        s.Cr4 = Cr4Pae | Cr4OsFxsr | Cr4OsXmmExcpt;
        s.Efer = EferLme | EferLma | EferNxe; // SCE clear on purpose: see the class remarks
        return s;
    }

    private static byte[] AssembleCode()
    {
        var code = new byte[GuestLayout.PageSize];
        code.AsSpan().Fill(0xCC);
        ulong origin = GuestLayout.SupervisorBase + GuestLayout.CodePhysical;

        var resume = Assemble(origin + GuestLayout.ResumeOffset, a => a.iretq());
        resume.CopyTo(code, (int)GuestLayout.ResumeOffset);
        for (int v = 0; v < GuestLayout.ExceptionVectors; v++)
        {
            ulong at = origin + GuestLayout.ExceptionStubOffset + ((ulong)v * GuestLayout.ExceptionStubStride);
            var stub = Assemble(at, a =>
            {
                a.@out((byte)(GuestLayout.ExceptionPortBase + v), AssemblerRegisters.al);
                a.jmp(GuestLayout.ResumeAddress);
            });
            if (stub.Length > (int)GuestLayout.ExceptionStubStride)
            {
                throw new InvalidOperationException("An exception stub is larger than its slot.");
            }

            stub.CopyTo(code, (int)(GuestLayout.ExceptionStubOffset + ((ulong)v * GuestLayout.ExceptionStubStride)));
        }

        return code;
    }

    private static byte[] AssembleTrampoline()
    {
        var code = Assemble(GuestLayout.TrampolineAddress, a =>
        {
            a.mov(AssemblerRegisters.rax, AssemblerRegisters.__qword_ptr[GuestLayout.DoorbellAddress]);
            a.jmp(AssemblerRegisters.rcx);
        });
        if (code.Length != (int)(GuestLayout.TrampolineReturn - GuestLayout.TrampolineAddress) + 2)
        {
            throw new InvalidOperationException("The trampoline does not have the expected shape.");
        }

        return code;
    }

    private static byte[] Assemble(ulong origin, Action<Assembler> emit)
    {
        var a = new Assembler(64);
        emit(a);
        var writer = new ByteWriter();
        a.Assemble(writer, origin);
        return writer.ToArray();
    }

    private sealed class ByteWriter : CodeWriter
    {
        private readonly List<byte> _bytes = [];

        public override void WriteByte(byte value) => _bytes.Add(value);

        public byte[] ToArray() => [.. _bytes];
    }
}
