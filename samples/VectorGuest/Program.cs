// VectorGuest: a guest built for x86-64-v3. The VM requires the x86-64-v3 processor model (AVX, AVX2, FMA, ...), on
// KVM or on the interpreter; the guest checks CPUID for AVX, AVX2 and FMA, enables AVX state the way an operating
// system does (CR4.OSXSAVE, then XSETBV with x87, SSE and AVX in XCR0), and computes the dot product of two arrays of
// 1,024 floats the host wrote into its memory, eight lanes at a time with VFMADD231PS on YMM registers. The host
// reads the result back and checks it against the same computation on its side.
//
//   dotnet run -c Release --project samples/VectorGuest [-- --backend kvm|interpreter|auto]
using Iced.Intel;
using Virt;
using Virt.Boot;
using static Iced.Intel.AssemblerRegisters;

var backend = BackendKind.Auto;
for (int i = 0; i + 1 < args.Length; i++)
{
    if (args[i] == "--backend")
    {
        backend = args[++i].ToLowerInvariant() switch
        {
            "kvm" => BackendKind.Kvm,
            "interpreter" => BackendKind.Interpreter,
            "whp" => BackendKind.Whp,
            "auto" => BackendKind.Auto,
            var other => throw new ArgumentException($"Unknown backend '{other}'; use kvm, interpreter, whp or auto."),
        };
    }
}

const ulong LoadAddress = 0x100000, A = 0x200000, B = 0x210000, Result = 0x220000;
const int Count = 1024;
var a = new float[Count];
var b = new float[Count];
for (int i = 0; i < Count; i++)
{
    a[i] = (i % 37) * 0.25f;
    b[i] = 1.5f - ((i % 11) * 0.125f);
}

try
{
    await using var vm = VirtualMachine.CreateBuilder()
        .WithName("vector")
        .WithMemoryMiB(16)
        .WithBackend(backend)
        .WithCpuModel(CpuModel.X64V3)
        .WithFlatBinary(AssembleGuest(LoadAddress), new GuestAddress(LoadAddress))
        .WithEntryPoint(new GuestAddress(LoadAddress), StartMode.Long64)
        .WithDebugExit()
        .Build();

    vm.Memory.Write(new GuestAddress(A), System.Runtime.InteropServices.MemoryMarshal.AsBytes(a.AsSpan()));
    vm.Memory.Write(new GuestAddress(B), System.Runtime.InteropServices.MemoryMarshal.AsBytes(b.AsSpan()));
    Console.WriteLine($"backend: {vm.BackendSelection.Name} ({vm.BackendSelection.Reason}), processor model {CpuModel.X64V3}");
    using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
    var exit = await vm.RunAsync(timeout.Token);
    if (exit.Reason != StopReason.DebugExit || exit.ExitCode != 0)
    {
        Console.WriteLine($"guest stopped: {exit.Description}{(exit.ExitCode == 3 ? " (CPUID lacks AVX, AVX2 or FMA)" : "")}");
        return 1;
    }

    float guest = vm.Memory.Read<float>(new GuestAddress(Result));
    float host = DotProduct(a, b);
    Console.WriteLine($"dot product of {Count} floats: guest {guest:R}, host {host:R}: {(BitConverter.SingleToInt32Bits(guest) == BitConverter.SingleToInt32Bits(host) ? "the same bits" : "DIFFERENT")}");
    return BitConverter.SingleToInt32Bits(guest) == BitConverter.SingleToInt32Bits(host) ? 0 : 1;
}
catch (InvalidOperationException e)
{
    Console.Error.WriteLine(e.Message);
    return 2;
}

// The guest's order of operations: eight running sums, each element added with one rounding (fused multiply-add),
// then the upper four sums added to the lower four, then two horizontal additions.
static float DotProduct(float[] a, float[] b)
{
    var lanes = new float[8];
    for (int i = 0; i < a.Length; i += 8)
    {
        for (int k = 0; k < 8; k++)
        {
            lanes[k] = MathF.FusedMultiplyAdd(a[i + k], b[i + k], lanes[k]);
        }
    }

    var x = new float[4];
    for (int k = 0; k < 4; k++)
    {
        x[k] = lanes[k] + lanes[k + 4];
    }

    float h0 = x[0] + x[1], h1 = x[2] + x[3];
    return h0 + h1;
}

// Long mode at CPL 0: check CPUID, enable AVX state, run the vector loop, store the sum, exit with code 0 (3 when a
// feature is missing) through the debug-exit port.
static byte[] AssembleGuest(ulong origin)
{
    var g = new Assembler(64);
    var missing = g.CreateLabel();
    var loop = g.CreateLabel();
    g.mov(eax, 1);
    g.xor(ecx, ecx);
    g.cpuid();
    g.mov(r8d, ecx);
    g.and(r8d, (1 << 12) | (1 << 26) | (1 << 28)); // FMA, XSAVE, AVX
    g.cmp(r8d, (1 << 12) | (1 << 26) | (1 << 28));
    g.jne(missing);
    g.mov(eax, 7);
    g.xor(ecx, ecx);
    g.cpuid();
    g.test(ebx, 1 << 5); // AVX2
    g.jz(missing);
    g.mov(rax, cr4);
    g.or(rax, 1 << 18); // OSXSAVE
    g.mov(cr4, rax);
    g.xor(ecx, ecx);
    g.mov(eax, 7); // XCR0: x87, SSE, AVX
    g.xor(edx, edx);
    g.xsetbv();
    g.vxorps(ymm0, ymm0, ymm0);
    g.mov(rsi, A);
    g.mov(rdi, B);
    g.mov(ecx, Count / 8);
    g.Label(ref loop);
    g.vmovups(ymm1, __ymmword_ptr[rsi]);
    g.vfmadd231ps(ymm0, ymm1, __ymmword_ptr[rdi]);
    g.add(rsi, 32);
    g.add(rdi, 32);
    g.dec(ecx);
    g.jnz(loop);
    g.vextractf128(xmm1, ymm0, 1);
    g.vaddps(xmm0, xmm0, xmm1);
    g.vhaddps(xmm0, xmm0, xmm0);
    g.vhaddps(xmm0, xmm0, xmm0);
    g.mov(rax, Result);
    g.vmovss(__dword_ptr[rax], xmm0);
    g.vzeroupper();
    g.mov(dx, VirtualMachineBuilder.DefaultDebugExitPort);
    g.xor(eax, eax);
    g.@out(dx, al);
    g.hlt();
    g.Label(ref missing);
    g.mov(dx, VirtualMachineBuilder.DefaultDebugExitPort);
    g.mov(eax, 3);
    g.@out(dx, al);
    g.hlt();
    var writer = new BytesWriter();
    g.Assemble(writer, origin);
    return writer.Bytes.ToArray();
}

internal sealed class BytesWriter : CodeWriter
{
    public List<byte> Bytes { get; } = [];

    public override void WriteByte(byte value) => Bytes.Add(value);
}
