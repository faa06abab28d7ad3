using Iced.Intel;
using Virt.Boot;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Cpu.Interpreter.Tests.Differential;

/// <summary>
/// The instructions 64-bit mode dropped and the far-pointer loads, in 32-bit compatibility mode at CPL 3. Random
/// sequences of PUSHA/POPA (both operand sizes), SALC and LDS, LES, LFS, LGS and LSS (selectors of the user data
/// segment, null, and now and then the kernel's, which faults with #GP) run on KVM, the interpreter and the JIT tier
/// (KVM runs CPL 3 code on the processor; see ../shared/design/ci-machine.md), with ALU operations and SAHF between
/// them; compared: the registers, the exception a sequence ends with, and the scratch memory and stack, where the
/// guest also stores the selectors at the end. The decimal adjustments, BOUND and ARPL are checked against worked
/// examples of the SDM's pseudo-code instead (<see cref="Decimal_adjustments_bound_and_arpl_give_the_sdm_results"/>):
/// on the CI machine KVM raises #UD for DAA, AAA, AAS, ARPL and BOUND in compatibility mode and gives DAS and AAD
/// flags that contradict the SDM (measured), so it is no reference for them there.
/// </summary>
public sealed class LegacyDifferentialTests
{
    private const int Pointers = 0x400;

    public static TheoryData<int> Batches() => [0, 1];

    [Theory]
    [MemberData(nameof(Batches))]
    public void Random_legacy_sequences_match_kvm(int batch)
    {
        int count = Environment.GetEnvironmentVariable("VIRT_LEGACY_COUNT") is { } n ? int.Parse(n, System.Globalization.CultureInfo.InvariantCulture) : 2000;
        DifferentialTests.RunBatch(batch, count, "VIRT_LEGACY_SEED", 0x1E6A, "legacy sequences", Build, jitEvery: 8, compatibility: true, normalize: Mask);
    }

    /// <summary>The final RFLAGS keeps only what every instruction of the menu defines (DF, IF and the like).</summary>
    private static SequenceResult Mask(SequenceResult r) => r with { Rflags = r.Rflags & ~0x8D5UL };

    internal static (byte[] Code, ulong EndRip, GeneralRegisters Regs, byte[] Scratch, string Listing) Build(int seed)
    {
        var r = new Random(seed);
        var scratch = new byte[DiffVm.ScratchSize];
        r.NextBytes(scratch.AsSpan(0, Pointers));

        // Far pointers: offsets anywhere, selectors the flat user data segment, null (fine for ES, FS and GS), and now
        // and then the kernel's (DPL 0: #GP at CPL 3). Slot 0 is for LSS: the stack's own top and the user segment.
        for (int i = 0; i < 16; i++)
        {
            uint offset = i == 0 ? (uint)(DiffVm.ScratchAddress + 0x1000) : (uint)r.Next();
            ushort selector = i == 0 ? ProcessorSetup.UserData : r.Next(8) switch { 0 => ProcessorSetup.KernelData, < 5 => ProcessorSetup.UserData, _ => (ushort)0 };
            BitConverter.TryWriteBytes(scratch.AsSpan(Pointers + (8 * i)), offset);
            BitConverter.TryWriteBytes(scratch.AsSpan(Pointers + (8 * i) + 4), selector);
        }

        var code = GuestProgram.Assemble(32, DiffVm.CodeAddress, a =>
        {
            int n = r.Next(6, 24);
            for (int i = 0; i < n; i++)
            {
                Emit(a, r);
            }

            // The selectors the far-pointer loads left.
            a.mov(__word_ptr[ebx + 0x900], es);
            a.mov(__word_ptr[ebx + 0x902], fs);
            a.mov(__word_ptr[ebx + 0x904], gs);
            a.mov(__word_ptr[ebx + 0x906], ds);
            a.mov(__word_ptr[ebx + 0x908], ss);
            a.hlt();
        });
        var regs = new GeneralRegisters
        {
            Rax = (uint)r.Next(), Rcx = (uint)r.Next(), Rdx = (uint)r.Next(), Rbx = DiffVm.ScratchAddress, Rbp = (uint)r.Next(),
            Rsi = (uint)r.Next(), Rdi = (uint)r.Next(), Rsp = DiffVm.ScratchAddress + 0x1000, Rip = DiffVm.CodeAddress, Rflags = 0x202,
        };
        return (code, DiffVm.CodeAddress + (ulong)code.Length - 1, regs, scratch, DiffVm.Listing(code, 32));
    }

    [System.Diagnostics.CodeAnalysis.SuppressMessage("Maintainability", "CA1502:Avoid excessive complexity", Justification = "A weighted menu of instruction forms.")]
    private static void Emit(Assembler a, Random r)
    {
        var reg32 = new[] { eax, ecx, edx, esi, edi, ebp }[r.Next(6)];
        var reg16 = new[] { ax, cx, dx, si, di, bp }[r.Next(6)];
        switch (r.Next(14))
        {
            case 0: a.add(al, (sbyte)r.Next(-128, 128)); break;
            case 1: a.sub(al, (sbyte)r.Next(-128, 128)); break;
            case 2: a.mov(ah, (byte)r.Next(256)); a.sahf(); break; // random SF, ZF, AF, PF, CF
            case 3: a.mov(al, (byte)r.Next(256)); break;
            case 4: case 5: a.db(0xD6); break; // SALC
            case 8: a.pushad(); a.popad(); break;
            case 9: a.pushad(); a.mov(__dword_ptr[esp + (4 * new[] { 0, 1, 2, 3, 5, 6, 7 }[r.Next(7)])], reg32); a.popad(); break; // not EBX's slot
            case 10: a.db(0x66, 0x60, 0x66, 0x61); break; // PUSHA, POPA with 16-bit operands
            case 6: case 7: case 11: case 12: a.mov(reg16, __word_ptr[ebx + (2 * r.Next(64))]); break;
            case 13:
            {
                // LES, LFS, LGS through slots 1-15, 32- or 16-bit offsets.
                var p = __fword_ptr[ebx + Pointers + (8 * r.Next(1, 16))];
                bool wide = r.Next(3) != 0;
                switch (r.Next(3))
                {
                    case 0: if (wide) { a.les(reg32, p); } else { a.les(reg16, __dword_ptr[ebx + Pointers + (8 * r.Next(1, 16)) + 2]); } break;
                    case 1: if (wide) { a.lfs(reg32, p); } else { a.lfs(reg16, __dword_ptr[ebx + Pointers + (8 * r.Next(1, 16)) + 2]); } break;
                    default: if (wide) { a.lgs(reg32, p); } else { a.lgs(reg16, __dword_ptr[ebx + Pointers + (8 * r.Next(1, 16)) + 2]); } break;
                }

                break;
            }

            case 14:
            {
                // LDS and LSS with slot 0: the user data segment and the stack's top.
                var keep = __fword_ptr[ebx + Pointers];
                if (r.Next(2) == 0)
                {
                    a.lds(reg32, keep);
                }
                else
                {
                    a.mov(__dword_ptr[ebx + Pointers], esp);
                    a.lss(esp, keep);
                }

                break;
            }

            default: a.adc(eax, r.Next()); break;
        }
    }


    public static TheoryData<string> InterpreterBackends() => ["interpreter", "jit"];

    /// <summary>Worked examples of DAA, DAS, AAA, AAS, AAM, AAD, ARPL and BOUND (SDM Vol. 2 pseudo-code), in compatibility mode at CPL 3.</summary>
    [Theory]
    [MemberData(nameof(InterpreterBackends))]
    public void Decimal_adjustments_bound_and_arpl_give_the_sdm_results(string backend)
    {
        using var vm = new DiffVm(TestBackends.Create(backend), compatibility: true);
        var code = GuestProgram.Assemble(32, DiffVm.CodeAddress, a =>
        {
            void Record(int slot)
            {
                a.mov(__word_ptr[ebx + slot], ax);
                a.pushfd();
                a.pop(__dword_ptr[ebx + slot + 4]);
            }

            a.mov(al, 0x79);
            a.add(al, 0x35); // 0xAE: 79 + 35 = 114 in BCD
            a.daa();
            Record(0x100);
            a.mov(al, 0x99);
            a.add(al, 0x01); // 0x9A: 99 + 1 = 100
            a.daa();
            Record(0x110);
            a.mov(al, 0x35);
            a.sub(al, 0x47); // 0xEE with a borrow: 35 - 47 = -12
            a.das();
            Record(0x120);
            a.mov(ax, 0x0039);
            a.add(al, 0x36); // '9' + '6' = 0x6F
            a.aaa();
            Record(0x130);
            a.mov(ax, 0x0133);
            a.sub(al, 0x38); // 13 - 8 in unpacked BCD: AL 0xFB with a borrow
            a.aas();
            Record(0x140);
            a.mov(ax, 0x0010);
            a.mov(cx, 0x002B);
            a.arpl(ax, cx); // RPL 0 raised to 3
            Record(0x150);
            a.mov(cx, 0x0010);
            a.arpl(ax, cx); // RPL 3 kept
            Record(0x160);
            a.mov(ax, 0x00FF);
            a.aam(10); // 255 = 25 × 10 + 5
            Record(0x170);
            a.mov(ax, 0x0709);
            a.aad(10); // 7 × 10 + 9 = 79 = 0x4F
            Record(0x180);
            a.mov(ax, 0x0C05);
            a.aad(0x20); // 12 × 32 + 5 = 389: AL 0x85, SF set
            Record(0x190);
            a.mov(eax, 5);
            a.bound(eax, __qword_ptr[ebx + 0x200]); // 5 in [-3, 5]: no fault
            a.mov(eax, 6);
            a.bound(eax, __qword_ptr[ebx + 0x200]); // 6 above 5: #BR
            a.hlt();
        });
        var regs = new GeneralRegisters { Rip = DiffVm.CodeAddress, Rsp = DiffVm.ScratchAddress + 0x1000, Rflags = 0x202, Rbx = DiffVm.ScratchAddress };
        var scratch = new byte[DiffVm.ScratchSize];
        BitConverter.TryWriteBytes(scratch.AsSpan(0x200), -3);
        BitConverter.TryWriteBytes(scratch.AsSpan(0x204), 5);
        var r = vm.Run(code, DiffVm.CodeAddress + (ulong)code.Length - 1, regs, scratch);
        Assert.Equal(5, r.Vector); // #BR, a fault: RIP at the BOUND
        Assert.Equal(6UL, r.Gprs[0]);
        (int Al, ulong Flags) At(int slot) => (BitConverter.ToUInt16(r.Scratch, slot), BitConverter.ToUInt32(r.Scratch, slot + 4));
        const ulong Cf = 1, Af = 0x10, Zf = 0x40;
        Assert.Equal(0x14, At(0x100).Al & 0xFF);
        Assert.Equal(Cf | Af, At(0x100).Flags & (Cf | Af | Zf));
        Assert.Equal(0x00, At(0x110).Al & 0xFF);
        Assert.Equal(Cf | Af | Zf, At(0x110).Flags & (Cf | Af | Zf));
        Assert.Equal(0x88, At(0x120).Al & 0xFF);
        Assert.Equal(Cf | Af, At(0x120).Flags & (Cf | Af));
        Assert.Equal(0x0105, At(0x130).Al);
        Assert.Equal(Cf | Af, At(0x130).Flags & (Cf | Af));
        Assert.Equal(0x0005, At(0x140).Al);
        Assert.Equal(Cf | Af, At(0x140).Flags & (Cf | Af));
        Assert.Equal(0x0013, At(0x150).Al);
        Assert.Equal(Zf, At(0x150).Flags & Zf);
        Assert.Equal(0x0013, At(0x160).Al);
        Assert.Equal(0UL, At(0x160).Flags & Zf);
        Assert.Equal(0x1905, At(0x170).Al);
        Assert.Equal(0x004F, At(0x180).Al);
        Assert.Equal(0x0085, At(0x190).Al);
        Assert.Equal(0x80UL, At(0x190).Flags & 0xC0); // SF from AL
    }
}
