using Iced.Intel;
using Virt.Cpu;
using Virt.Memory;
using Virt.X86;

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
    public const ulong InitialUserFlags = Rflags.InterruptEnable | Rflags.Fixed;

    /// <summary>CR0 while the program runs: protected mode, paging, write protection, native x87 errors.</summary>
    public const ulong Cr0Value = Cr0.ProtectionEnable | Cr0.MonitorCoprocessor | Cr0.ExtensionType | Cr0.NumericError | Cr0.WriteProtect | Cr0.Paging;

    /// <summary>CR4 while the program runs: PAE (4-level paging in long mode) and SSE.</summary>
    public const ulong Cr4Value = Cr4.Pae | Cr4.OsFxsr | Cr4.OsXmmExcpt;

    /// <summary>EFER while the program runs: long mode and NX; SCE clear on purpose (see the class remarks).</summary>
    public const ulong EferValue = Efer.LongModeEnable | Efer.LongModeActive | Efer.NoExecuteEnable;

    /// <summary>RFLAGS bits cleared on SYSCALL: none, so a trampoline-path call keeps the program's flags as Linux does.</summary>
    public const ulong SyscallFlagMask = 0;

    /// <summary>RFLAGS bits a return to CPL 3 keeps from the program's R11: CF, PF, AF, ZF, SF, TF, DF, OF, AC, ID (never IOPL, NT, RF, VM, VIF, VIP).</summary>
    public const ulong UserFlagsMask = Rflags.Status | Rflags.Trap | Rflags.Direction | Rflags.AlignmentCheck | Rflags.Id;

    /// <summary>Bytes of the GDT: null, kernel code and data, user code 32, user data, user code 64, then the 16-byte TSS descriptor.</summary>
    private const int GdtSize = (6 * SegmentDescriptor.Size) + SegmentDescriptor.SystemSize;

    /// <summary>IST slot every gate uses, so an exception always lands on the supervisor's own stack.</summary>
    private const byte IstIndex = 1;

    private static readonly Lazy<byte[]> Code = new(AssembleCode);
    private static readonly Lazy<byte[]> Trampoline = new(AssembleTrampoline);

    /// <summary>Writes GDT, TSS, IDT and stub code into their supervisor pages.</summary>
    public static void Install(GuestMemory memory)
    {
        // Code and data descriptors have the accessed bit preset: the CPU never writes the GDT.
        Span<ulong> gdt =
        [
            0,
            SegmentDescriptor.Encode(SegmentRegister.Flat(GuestLayout.KernelCode, code: true, longMode: true)),
            SegmentDescriptor.Encode(SegmentRegister.Flat(GuestLayout.KernelData, code: false, longMode: false)),
            SegmentDescriptor.Encode(UserCode32), // the STAR base for SYSRET; never loaded
            SegmentDescriptor.Encode(UserData),
            SegmentDescriptor.Encode(UserCode),
        ];
        for (int i = 0; i < gdt.Length; i++)
        {
            memory.Write(new GuestAddress(GuestLayout.GdtPhysical + (ulong)(i * SegmentDescriptor.Size)), gdt[i]);
        }

        memory.Write(new GuestAddress(GuestLayout.GdtPhysical + GuestLayout.TssSelector), SegmentDescriptor.EncodeSystem(TaskRegister));

        var tss = new GuestAddress(GuestLayout.GdtPhysical + GuestLayout.TssOffset);
        memory.Write(tss + TaskStateSegment.Rsp0Offset, GuestLayout.ExceptionStackTop);
        memory.Write(tss + (ulong)TaskStateSegment.InterruptStackOffset(IstIndex), GuestLayout.ExceptionStackTop);
        memory.Write(tss + TaskStateSegment.IoMapBaseOffset, TaskStateSegment.NoIoBitmap); // every port is denied at CPL 3

        for (int v = 0; v < GuestLayout.ExceptionVectors; v++)
        {
            ulong handler = GuestLayout.SupervisorBase + GuestLayout.CodePhysical + GuestLayout.ExceptionStubOffset + ((ulong)v * GuestLayout.ExceptionStubStride);
            // DPL 3 for #BP and #OF: int3/into from user mode report their own vector instead of a #GP.
            byte dpl = v is ExceptionVector.Breakpoint or ExceptionVector.Overflow ? (byte)3 : (byte)0;
            var gate = GateDescriptor.Interrupt(handler, GuestLayout.KernelCode, IstIndex, dpl);
            memory.Write(new GuestAddress(GuestLayout.IdtPhysical + (ulong)(v * GateDescriptor.Size)), gate.Encode());
        }

        memory.Write(new GuestAddress(GuestLayout.CodePhysical), Code.Value);
        memory.Write(new GuestAddress(GuestLayout.TrampolinePhysical), Vdso.Image);
        memory.Write(new GuestAddress(GuestLayout.TrampolinePhysical + (GuestLayout.TrampolineAddress - GuestLayout.VdsoAddress)), Trampoline.Value);
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
        s.Cs = UserCode;
        s.Ds = s.Es = s.Ss = s.Fs = s.Gs = UserData;
        s.Tr = TaskRegister;
        s.Ldt = new SegmentRegister { Unusable = true, Type = SegmentType.Ldt };
        s.Gdt = new DescriptorTable { Base = GuestLayout.SupervisorBase + GuestLayout.GdtPhysical, Limit = GdtSize - 1 };
        s.Idt = new DescriptorTable { Base = GuestLayout.SupervisorBase + GuestLayout.IdtPhysical, Limit = (GuestLayout.ExceptionVectors * GateDescriptor.Size) - 1 };
        s.Cr0 = Cr0Value;
        s.Cr2 = 0;
        s.Cr3 = cr3;
        s.Cr4 = Cr4Value;
        s.Efer = EferValue;
        return s;
    }

    /// <summary>How the processor walks the page tables at <paramref name="cr3"/> while the program runs.</summary>
    public static PagingState Paging(ulong cr3) => new(Cr0Value, cr3, Cr4Value, EferValue);

    /// <summary>The 64-bit user code segment (CS at CPL 3).</summary>
    private static SegmentRegister UserCode => SegmentRegister.Flat(GuestLayout.UserCode, code: true, longMode: true, dpl: 3);

    /// <summary>The 32-bit user code segment SYSRET's selector arithmetic expects below the user data segment.</summary>
    private static SegmentRegister UserCode32 => SegmentRegister.Flat(GuestLayout.SysretBase | 3, code: true, longMode: false, dpl: 3);

    /// <summary>The user data segment (SS, DS, ES, FS, GS at CPL 3; FS and GS bases come from their MSRs).</summary>
    private static SegmentRegister UserData => SegmentRegister.Flat(GuestLayout.UserData, code: false, longMode: false, dpl: 3);

    /// <summary>TR: the busy 64-bit TSS in the GDT page, seen through the supervisor mapping.</summary>
    private static SegmentRegister TaskRegister => new()
    {
        Base = GuestLayout.SupervisorBase + GuestLayout.GdtPhysical + GuestLayout.TssOffset, Limit = TaskStateSegment.Limit,
        Selector = GuestLayout.TssSelector, Type = SegmentType.TssBusy, Present = true,
    };

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
