using System.Buffers.Binary;
using Iced.Intel;
using Virt.Cpu;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Sandbox.Tests;

/// <summary>
/// Nothing survives from one call to the next. A probe program dumps the architectural state it can see right
/// after its ready-point read, then plants a different value in every piece of it and exits. Every call restores
/// the snapshot taken at that read, so every call's dump must equal the first call's, whatever the calls before
/// it planted.
/// </summary>
public sealed class IsolationTests
{
    private const ulong Input = TinyElf.DataAddress;
    private const ulong MarkerA = TinyElf.DataAddress + 0x40;   // FS base at the ready point
    private const ulong MarkerB = TinyElf.DataAddress + 0x48;   // FS base a call plants
    private const ulong Scratch = TinyElf.DataAddress + 0x50;
    private const ulong Dump = TinyElf.DataAddress + 0x100;     // 64-byte aligned

    // Dump layout.
    private const int FxsaveAt = 0, YmmAt = 512, ZmmAt = 1024, OpmaskAt = 1088, PkruAt = 1096, FsMarkerAt = 1104, GsBaseAt = 1112,
        FlagsAt = 1120, SelectorsAt = 1128, GprAt = 1136, DumpBytes = 1184;

    [Flags]
    private enum Plant : byte
    {
        None = 0,
        Avx = 1,
        Avx512 = 2,
        Pkru = 4,
        GsBase = 8,
    }

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public static TheoryData<string> Backends() => new() { "kvm", "interpreter" };

    private static SandboxBuilder Builder(string backend)
    {
        if (backend == "kvm")
        {
            HostRequirements.RequireKvm();
        }

        var data = new byte[0x100 + DumpBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(data.AsSpan((int)(MarkerA - TinyElf.DataAddress)), 0xAAAA_1111_AAAA_1111);
        BinaryPrimitives.WriteUInt64LittleEndian(data.AsSpan((int)(MarkerB - TinyElf.DataAddress)), 0xBBBB_2222_BBBB_2222);
        return Sandbox.CreateBuilder()
            .WithExecutable(TinyElf.Build(Probe, data))
            .WithBackend(backend == "kvm" ? BackendKind.Kvm : BackendKind.Interpreter)
            .WithTimeLimit(TimeSpan.FromSeconds(30));
    }

    /// <summary>What the probe may touch on this backend: the state the sandbox says a program can reach, and FS/GS base writes where user code can make them.</summary>
    private static Plant Reachable(SandboxIsolation isolation)
    {
        var p = Plant.None;
        if ((isolation.HiddenStateReachable & XsaveComponents.Avx) != 0)
        {
            p |= Plant.Avx;
        }

        if ((isolation.HiddenStateReachable & XsaveComponents.Avx512OpMask) != 0)
        {
            p |= Plant.Avx512;
        }

        if ((isolation.HiddenStateReachable & XsaveComponents.Pkru) != 0)
        {
            p |= Plant.Pkru;
        }

        if (isolation.UserModeRunsOnHost && HostCpuFlag("fsgsbase"))
        {
            p |= Plant.GsBase;
        }

        return p;
    }

    private static bool HostCpuFlag(string flag) =>
        File.Exists("/proc/cpuinfo") && File.ReadLines("/proc/cpuinfo").Any(l => l.StartsWith("flags", StringComparison.Ordinal) && l.Split(' ').Contains(flag));

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Warm_calls_see_the_snapshot_state_whatever_the_previous_call_planted(string backend)
    {
        await using var sandbox = Builder(backend).Build();
        var first = await sandbox.RunAsync(new byte[] { 0, 1 }, Ct);
        AssertDumped(first);
        var plant = Reachable(first.Isolation!);
        byte[] reference = first.Stdout.ToArray();
        AssertSnapshotValues(reference);

        for (byte call = 2; call <= 5; call++)
        {
            var result = await sandbox.RunAsync(new byte[] { (byte)plant, call }, Ct);
            AssertDumped(result);
            AssertSameState(reference, result.Stdout.ToArray(), plant, $"call {call} on {backend}");
        }
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Pool_calls_see_the_snapshot_state_on_every_sandbox(string backend)
    {
        var builder = Builder(backend);
        await using var pool = await SandboxPool.CreateAsync(builder, 2, Ct);
        var first = await pool.RunAsync(new byte[] { 0, 1 }, Ct);
        AssertDumped(first);
        var plant = Reachable(first.Isolation!);
        byte[] reference = first.Stdout.ToArray();
        AssertSnapshotValues(reference);

        var calls = Enumerable.Range(2, 8).Select(i => pool.RunAsync(new byte[] { (byte)plant, (byte)i }, Ct)).ToArray();
        foreach (var (result, i) in (await Task.WhenAll(calls)).Select((r, i) => (r, i)))
        {
            AssertDumped(result);
            AssertSameState(reference, result.Stdout.ToArray(), plant, $"pooled call {i + 2} on {backend}");
        }
    }

    [Fact]
    public async Task Kvm_reports_what_it_enforces_and_what_the_program_can_reach()
    {
        await using var sandbox = Builder("kvm").Build();
        var result = await sandbox.RunAsync(new byte[] { 0, 1 }, Ct);
        AssertDumped(result);
        var isolation = result.Isolation!;
        Assert.Equal("kvm", isolation.Backend);
        Assert.Equal(isolation, sandbox.Isolation);
        // The policy holds wherever CPUID faults at CPL 3 or guest user code does not run on the host processor.
        Assert.Equal(isolation.CpuidFaulting || !isolation.UserModeRunsOnHost, isolation.CpuidPolicyEnforced);
        if (isolation.UserModeRunsOnHost && System.Runtime.Intrinsics.X86.Avx.IsSupported)
        {
            Assert.True((isolation.HiddenStateReachable & XsaveComponents.Avx) != 0, $"{isolation}");
        }
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Cpuid_hides_xsave_avx_and_protection_keys_from_the_program(string backend)
    {
        if (backend == "kvm")
        {
            HostRequirements.RequireKvm();
        }

        var elf = TinyElf.Build(a =>
        {
            // Leaf 1 ECX and leaf 7 EBX/ECX to stdout.
            a.mov(eax, 1);
            a.xor(ecx, ecx);
            a.cpuid();
            a.mov(__dword_ptr[Scratch], ecx);
            a.mov(eax, 7);
            a.xor(ecx, ecx);
            a.cpuid();
            a.mov(__dword_ptr[Scratch + 4], ebx);
            a.mov(__dword_ptr[Scratch + 8], ecx);
            a.mov(eax, 1);
            a.mov(edi, 1);
            a.mov(esi, (uint)Scratch);
            a.mov(edx, 12);
            a.syscall();
            a.mov(eax, 231);
            a.xor(edi, edi);
            a.syscall();
        }, new byte[0x100]);
        await using var sandbox = Sandbox.CreateBuilder().WithExecutable(elf)
            .WithBackend(backend == "kvm" ? BackendKind.Kvm : BackendKind.Interpreter).Build();
        var result = await sandbox.RunAsync(default, Ct);
        Assert.True(result.Status == SandboxStatus.Exited, $"{result} {result.Message}");
        var outBytes = result.Stdout.Span;
        uint leaf1Ecx = BinaryPrimitives.ReadUInt32LittleEndian(outBytes);
        uint leaf7Ebx = BinaryPrimitives.ReadUInt32LittleEndian(outBytes[4..]);
        uint leaf7Ecx = BinaryPrimitives.ReadUInt32LittleEndian(outBytes[8..]);
        if (!result.Isolation!.CpuidPolicyEnforced)
        {
            // A KVM whose host processor cannot make CPUID fault at CPL 3 (PVM on AMD): the report says so, and it
            // is true, since the program reads the host's own answers.
            Assert.Equal("kvm", backend);
            Assert.True(result.Isolation.UserModeRunsOnHost, $"{result.Isolation}");
            Assert.Equal(System.Runtime.Intrinsics.X86.Avx.IsSupported, (leaf1Ecx & (1u << 28)) != 0);
            return;
        }

        Assert.Equal(0u, leaf1Ecx & ((1u << 26) | (1u << 27) | (1u << 28))); // XSAVE, OSXSAVE, AVX
        Assert.Equal(0u, leaf7Ebx & ((1u << 5) | (1u << 16)));                // AVX2, AVX-512F
        Assert.Equal(0u, leaf7Ecx & ((1u << 3) | (1u << 4)));                 // PKU, OSPKE
    }

    private static void AssertDumped(SandboxResult result)
    {
        Assert.True(result.Status == SandboxStatus.Exited && result.ExitCode == 0, $"{result} {result.Message}");
        Assert.Equal(DumpBytes, result.Stdout.Length);
    }

    /// <summary>The first call's dump shows the state at the ready point: what the program's start gave it.</summary>
    private static void AssertSnapshotValues(byte[] dump)
    {
        var fx = XsaveState.ReadLegacyRegion(dump.AsSpan(FxsaveAt, 512));
        Assert.Equal((ushort)0x037F, fx.ControlWord);
        Assert.Equal(0x1F80u, fx.Mxcsr);
        Assert.Equal(0, fx.AbridgedTagWord);
        Assert.True(((ReadOnlySpan<byte>)fx.Xmm).IndexOfAnyExcept((byte)0) < 0, "XMM registers are not zero at the ready point");
        Assert.Equal(0xAAAA_1111_AAAA_1111UL, BinaryPrimitives.ReadUInt64LittleEndian(dump.AsSpan(FsMarkerAt)));
        Assert.Equal(0UL, BinaryPrimitives.ReadUInt64LittleEndian(dump.AsSpan(FlagsAt)) & (1UL << 10)); // DF clear
    }

    private static void AssertSameState(byte[] reference, byte[] dump, Plant planted, string what)
    {
        void Same(int offset, int length, string name)
        {
            var expected = reference.AsSpan(offset, length);
            var actual = dump.AsSpan(offset, length);
            Assert.True(expected.SequenceEqual(actual), $"{what}: {name} carried over from an earlier call: expected {Convert.ToHexString(expected)}, got {Convert.ToHexString(actual)}");
        }

        // FXSAVE bytes 0-415: x87 control, status, tag, last instruction and data pointers, MXCSR, ST0-7, XMM0-15.
        Same(FxsaveAt, 32, "x87 control/status/tag and MXCSR");
        Same(FxsaveAt + 32, 128, "x87 register stack");
        Same(FxsaveAt + 160, 256, "XMM registers");
        if ((planted & Plant.Avx) != 0)
        {
            Same(YmmAt, 512, "YMM registers (upper halves included)");
        }

        if ((planted & Plant.Avx512) != 0)
        {
            Same(ZmmAt, 64, "ZMM31");
            Same(OpmaskAt, 8, "opmask k1");
        }

        if ((planted & Plant.Pkru) != 0)
        {
            Same(PkruAt, 4, "PKRU");
        }

        Same(FsMarkerAt, 8, "FS base (what fs:[0] reads)");
        if ((planted & Plant.GsBase) != 0)
        {
            Same(GsBaseAt, 8, "GS base");
        }

        Same(FlagsAt, 8, "RFLAGS");
        Same(SelectorsAt, 8, "ES/DS/FS/GS selectors");
        Same(GprAt, 48, "general registers R12-R15, RBX, RBP");
    }

    /// <summary>
    /// The probe. Before its ready point it points FS at marker A. After the read it dumps the state, writes the
    /// dump to stdout, plants a different value in every piece of state the input byte allows, and exits.
    /// </summary>
    private static void Probe(Assembler a)
    {
        var noAvx = a.CreateLabel();
        var noAvx512 = a.CreateLabel();
        var noPkru = a.CreateLabel();
        var noGs = a.CreateLabel();
        var plantNoAvx = a.CreateLabel();
        var plantNoAvx512 = a.CreateLabel();
        var plantNoPkru = a.CreateLabel();
        var plantNoGs = a.CreateLabel();

        // arch_prctl(ARCH_SET_FS, marker A), then the ready point: read(0, Input, 64).
        a.mov(eax, 158);
        a.mov(edi, 0x1002);
        a.mov(esi, (uint)MarkerA);
        a.syscall();
        a.xor(eax, eax);
        a.xor(edi, edi);
        a.mov(esi, (uint)Input);
        a.mov(edx, 64);
        a.syscall();

        // ---- dump (RFLAGS first: the tests below change them) ----
        a.pushfq();
        a.pop(__qword_ptr[Dump + FlagsAt]);
        a.movzx(r8d, __byte_ptr[Input]);     // what to touch
        a.mov(edi, (uint)Dump);
        a.fxsave64(__[rdi + FxsaveAt]);
        a.test(r8b, (byte)Plant.Avx);
        a.jz(noAvx);
        AssemblerRegisterYMM[] ymms = [ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11, ymm12, ymm13, ymm14, ymm15];
        for (int i = 0; i < 16; i++)
        {
            a.vmovdqu(__ymmword_ptr[rdi + YmmAt + (i * 32)], ymms[i]);
        }

        a.Label(ref noAvx);
        a.test(r8b, (byte)Plant.Avx512);
        a.jz(noAvx512);
        a.vmovdqu64(__zmmword_ptr[rdi + ZmmAt], zmm31);
        a.kmovq(__qword_ptr[rdi + OpmaskAt], k1);
        a.Label(ref noAvx512);
        a.test(r8b, (byte)Plant.Pkru);
        a.jz(noPkru);
        a.xor(ecx, ecx);
        a.rdpkru();
        a.mov(__dword_ptr[rdi + PkruAt], eax);
        a.Label(ref noPkru);
        a.mov(rax, __qword_ptr.fs[0]);
        a.mov(__qword_ptr[rdi + FsMarkerAt], rax);
        a.test(r8b, (byte)Plant.GsBase);
        a.jz(noGs);
        a.rdgsbase(rax);
        a.mov(__qword_ptr[rdi + GsBaseAt], rax);
        a.Label(ref noGs);
        a.mov(ax, es);
        a.mov(__word_ptr[rdi + SelectorsAt], ax);
        a.mov(ax, ds);
        a.mov(__word_ptr[rdi + SelectorsAt + 2], ax);
        a.mov(ax, fs);
        a.mov(__word_ptr[rdi + SelectorsAt + 4], ax);
        a.mov(ax, gs);
        a.mov(__word_ptr[rdi + SelectorsAt + 6], ax);
        AssemblerRegister64[] gprs = [r12, r13, r14, r15, rbx, rbp];
        for (int i = 0; i < gprs.Length; i++)
        {
            a.mov(__qword_ptr[rdi + GprAt + (i * 8)], gprs[i]);
        }

        // write(1, Dump, DumpBytes)
        a.mov(eax, 1);
        a.mov(edi, 1);
        a.mov(esi, (uint)Dump);
        a.mov(edx, DumpBytes);
        a.syscall();

        // ---- plant: every value differs from the ready point's and depends on the call (second input byte) ----
        a.movzx(r8d, __byte_ptr[Input]);
        a.movzx(r9d, __byte_ptr[Input + 1]);
        a.fld1();
        a.fldpi();
        a.fldl2e();
        a.mov(__word_ptr[Scratch], 0x0C7F);
        a.fldcw(__word_ptr[Scratch]);
        a.mov(eax, r9d);
        a.and(eax, 0x3F);
        a.or(eax, 0x7F80);                   // all exceptions masked, round toward zero, some sticky flags
        a.mov(__dword_ptr[Scratch + 4], eax);
        a.ldmxcsr(__dword_ptr[Scratch + 4]);
        AssemblerRegisterXMM[] xmms = [xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7, xmm8, xmm9, xmm10, xmm11, xmm12, xmm13, xmm14, xmm15];
        foreach (var x in xmms)
        {
            a.pcmpeqb(x, x);
        }

        a.test(r8b, (byte)Plant.Avx);
        a.jz(plantNoAvx);
        foreach (var y in ymms)
        {
            a.vpcmpeqb(y, y, y);
        }

        a.Label(ref plantNoAvx);
        a.test(r8b, (byte)Plant.Avx512);
        a.jz(plantNoAvx512);
        a.vpternlogd(zmm31, zmm31, zmm31, 0xFF);
        a.kxnorq(k1, k1, k1);
        a.Label(ref plantNoAvx512);
        a.test(r8b, (byte)Plant.Pkru);
        a.jz(plantNoPkru);
        a.mov(eax, 0x5555_5550);             // key 0 (bits 0-1) stays open: the probe's own accesses use it
        a.xor(ecx, ecx);
        a.xor(edx, edx);
        a.wrpkru();
        a.Label(ref plantNoPkru);
        a.test(r8b, (byte)Plant.GsBase);
        a.jz(plantNoGs);
        a.lea(rax, __[r9 + (int)MarkerB]);
        a.wrgsbase(rax);
        a.Label(ref plantNoGs);
        a.mov(eax, 158);                     // arch_prctl(ARCH_SET_FS, marker B)
        a.mov(edi, 0x1002);
        a.mov(esi, (uint)MarkerB);
        a.syscall();
        a.xor(eax, eax);
        a.mov(es, ax);
        a.mov(ds, ax);
        a.lea(r12, __[r9 + 0x1212]);
        a.lea(r13, __[r9 + 0x1313]);
        a.lea(r14, __[r9 + 0x1414]);
        a.lea(r15, __[r9 + 0x1515]);
        a.lea(rbx, __[r9 + 0xB0B0]);
        a.lea(rbp, __[r9 + 0xB9B9]);
        a.std();
        a.mov(eax, 231);                     // exit_group(0)
        a.xor(edi, edi);
        a.syscall();
    }
}
