using Iced.Intel;
using Virt.Boot;
using Virt.Testing;
using Virt.X86;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>
/// Virtual-8086 mode (SDM Vol. 3, chapter 20): entered by IRETD from CPL 0 with VM in the EFLAGS image; real-mode
/// style addressing with 64 KiB limits; CLI, STI, PUSHF, POPF, INT n and IRET trap to #GP(0) unless IOPL is 3; INT3 is
/// not IOPL-sensitive; I/O goes by the TSS permission bitmap whatever IOPL says; LAR and the other protected-mode
/// instructions raise #UD; interrupts and exceptions go through the protected-mode IDT to CPL 0 with the
/// virtual-8086 frame (GS, FS, DS, ES, SS, ESP, EFLAGS, CS, EIP) and null data segments, and IRETD returns.
/// Interpreter tiers only (the CI machines' KVM cannot run the CPL 0 part, see <see cref="SegmentLimitTests"/>).
/// </summary>
public sealed class Virtual8086Tests
{
    private const ulong Gdt = 0x1000, Idt = 0x3000, Tss = 0x2000;
    private const ulong V86Code = 0x20000, V86Data = 0x50000, Handlers = 0x60000, Common = 0x61000, Results = 0x70000;
    private const ushort Code = 0x08, Data = 0x10, TssSel = 0x18;
    private const ushort CodeSeg = 0x2000, DataSeg = 0x5000, StackSeg = 0x3000;
    private const ushort SkipOffset = 0x20;
    private const int RecordBytes = 64;

    /// <summary>One recorded exception: the vector, the error code (0 when none), the frame and DS in the handler.</summary>
    private sealed record Record(uint Vector, uint Error, uint Eip, uint Cs, uint Eflags, uint Esp, uint Ss, uint Es, uint Ds, uint Fs, uint Gs, uint HandlerDs);

    private static (List<Record> Records, int PortExits, ushort Stored, ushort Pushed) Run(string backend, uint iopl, Action<Assembler> v86)
    {
        using var m = new Machine(TestBackends.Create(backend));
        ulong[] gdt =
        [
            0,
            SegmentDescriptor.Encode(SegmentRegister.Flat(Code, code: true, longMode: false)),
            SegmentDescriptor.Encode(SegmentRegister.Flat(Data, code: false, longMode: false)),
            SegmentDescriptor.Encode(new SegmentRegister { Base = Tss, Limit = 0x7F, Type = 0xB, Present = true }),
        ];
        for (int i = 0; i < gdt.Length; i++)
        {
            m.Memory.Write(new GuestAddress(Gdt + (ulong)(i * 8)), gdt[i]);
        }

        // TSS: ESP0/SS0, the I/O map at 0x68 denying every port but 0x80.
        m.Memory.Write(new GuestAddress(Tss + 4), 0x9000u);
        m.Memory.Write(new GuestAddress(Tss + 8), (uint)Data);
        m.Memory.Write(new GuestAddress(Tss + 0x66), (ushort)0x68);
        for (ulong b = 0x68; b < 0x80; b++)
        {
            m.Memory.Write(new GuestAddress(Tss + b), (byte)(b == 0x68 + (0x80 >> 3) ? 0xFE : 0xFF));
        }

        for (int v = 0; v < 0x40; v++)
        {
            ulong at = Handlers + (ulong)(v * 16);
            int vector = v;
            m.Memory.Write(new GuestAddress(at), GuestProgram.Assemble(32, at, a =>
            {
                if (!ExceptionVector.HasErrorCode(vector))
                {
                    a.push(0);
                }

                a.push(vector);
                a.jmp(Common);
            }));

            // 32-bit interrupt gates, DPL 3 (INT3 and INT n from virtual-8086 mode check it).
            ulong gate = (at & 0xFFFF) | ((ulong)Code << 16) | (0xEEUL << 40) | ((at >> 16) << 48);
            m.Memory.Write(new GuestAddress(Idt + (ulong)(v * 8)), gate);
        }

        // Record the frame, then halt on #BP or skip the faulting instruction (its length is at DS:SkipOffset) and return.
        m.Memory.Write(new GuestAddress(Common), GuestProgram.Assemble(32, Common, a =>
        {
            var halt = a.CreateLabel();
            a.push(eax);
            a.push(ebx);
            a.mov(eax, ds);
            a.push(eax);
            a.mov(eax, Data);
            a.mov(ds, eax);
            a.mov(ebx, __dword_ptr[(uint)Results]);
            a.shl(ebx, 6);
            for (int k = 0; k < 11; k++)
            {
                a.mov(eax, __dword_ptr[esp + 12 + (k * 4)]);
                a.mov(__dword_ptr[ebx + (int)Results + 64 + (k * 4)], eax);
            }

            a.pop(eax);
            a.mov(__dword_ptr[ebx + (int)Results + 64 + 44], eax);
            a.inc(__dword_ptr[(uint)Results]);
            a.cmp(__dword_ptr[esp + 8], 3);
            a.je(halt);
            a.movzx(eax, __byte_ptr[(uint)(V86Data + SkipOffset)]);
            a.add(__dword_ptr[esp + 16], eax);
            a.pop(ebx);
            a.pop(eax);
            a.add(esp, 8);
            a.iretd();
            a.Label(ref halt);
            a.hlt();
        }));
        m.Memory.Write(new GuestAddress(V86Code), GuestProgram.Assemble(16, 0, v86));
        m.Memory.Write(new GuestAddress(V86Data + 0x10), (ushort)0xBEEF);
        var enter = GuestProgram.Assemble(32, Machine.CodeAddress, a =>
        {
            a.push(0);
            a.push(0);
            a.push(DataSeg);
            a.push(DataSeg);
            a.push(StackSeg);
            a.push(0x1000);
            a.push((int)(Rflags.Virtual8086 | 2 | (iopl << 12)));
            a.push(CodeSeg);
            a.push(0);
            a.iretd();
        });
        m.Start(StartMode.Protected32, enter, stack: 0x9000);
        var s = m.Vcpu.GetSpecialRegisters();
        s.Gdt = new DescriptorTable { Base = Gdt, Limit = (ushort)((gdt.Length * 8) - 1) };
        s.Idt = new DescriptorTable { Base = Idt, Limit = (0x40 * 8) - 1 };
        s.Cs = SegmentDescriptor.Decode(gdt[1], Code);
        s.Ds = s.Es = s.Fs = s.Gs = s.Ss = SegmentDescriptor.Decode(gdt[2], Data);
        s.Tr = SegmentDescriptor.Decode(gdt[3], TssSel);
        m.Vcpu.SetSpecialRegisters(s);
        int ports = 0;
        VcpuExit exit;
        while ((exit = m.Run()).Reason == VcpuExitReason.PortIo)
        {
            Assert.Equal((ushort)0x80, exit.Port);
            ports++;
        }

        Assert.True(exit.Reason == VcpuExitReason.Halt, exit.ToString());
        int n = (int)m.Memory.Read<uint>(new GuestAddress(Results));
        var records = new List<Record>();
        for (int i = 0; i < n; i++)
        {
            var f = new uint[12];
            for (int k = 0; k < 12; k++)
            {
                f[k] = m.Memory.Read<uint>(new GuestAddress(Results + RecordBytes + (ulong)(i * RecordBytes) + (ulong)(k * 4)));
            }

            records.Add(new Record(f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11]));
        }

        return (records, ports, m.Memory.Read<ushort>(new GuestAddress(V86Data + 0x12)), m.Memory.Read<ushort>(new GuestAddress(V86Data + 0x14)));
    }

    private static void Skip(Assembler a, byte n) => a.mov(__byte_ptr[SkipOffset], n);

    [Theory]
    [InlineData("interpreter")]
    [InlineData("jit")]
    public void Iopl_sensitive_instructions_io_bitmap_and_limits_trap_to_the_protected_mode_handler(string backend)
    {
        var (records, ports, stored, _) = Run(backend, iopl: 0, a =>
        {
            a.mov(ax, __word_ptr[0x10]);
            a.mov(__word_ptr[0x12], ax);
            Skip(a, 1);
            a.cli();
            Skip(a, 1);
            a.pushf();
            Skip(a, 2);
            a.@int(0x21);
            a.@out(0x80, al);
            Skip(a, 2);
            a.@out(0x81, al);
            Skip(a, 3);
            a.lar(ax, bx);
            Skip(a, 3);
            a.mov(ax, __word_ptr[0xFFFF]);
            a.int3();
        });
        Assert.Equal((ushort)0xBEEF, stored);
        Assert.Equal(1, ports);
        Assert.Equal([13u, 13, 13, 13, 6, 13, 3], records.Select(r => r.Vector));
        Assert.All(records, r =>
        {
            Assert.Equal(0u, r.Error);
            Assert.Equal((uint)CodeSeg, r.Cs);
            Assert.NotEqual(0u, r.Eflags & (uint)Rflags.Virtual8086);
            Assert.Equal((0x1000u, (uint)StackSeg), (r.Esp, r.Ss));
            Assert.Equal(((uint)DataSeg, (uint)DataSeg, 0u, 0u), (r.Es, r.Ds, r.Fs, r.Gs));
            Assert.Equal(0u, r.HandlerDs);
        });
    }

    [Theory]
    [InlineData("interpreter")]
    [InlineData("jit")]
    public void With_iopl_3_cli_sti_pushf_run_and_int_n_goes_through_the_idt(string backend)
    {
        var (records, _, _, pushed) = Run(backend, iopl: 3, a =>
        {
            a.cli();
            a.sti();
            a.pushf();
            a.pop(ax);
            a.mov(__word_ptr[0x14], ax);
            Skip(a, 0);
            a.@int(0x21);
            a.int3();
        });
        Assert.Equal(0x3200, pushed & 0x3200);
        Assert.Equal([0x21u, 3], records.Select(r => r.Vector));
        var r = records[0];
        Assert.NotEqual(0u, r.Eflags & (uint)Rflags.Virtual8086);
        Assert.Equal(((uint)CodeSeg, (uint)DataSeg, 0u), (r.Cs, r.Ds, r.HandlerDs));
    }
}
