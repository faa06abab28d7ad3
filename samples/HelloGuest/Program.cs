// HelloGuest: builds a VM with the fluent builder, runs a tiny long-mode guest that prints a line
// through the 16550 UART and stops through the debug-exit port, then reports how it stopped. With
// --cpus N every vCPU starts at the entry point (RDI = its index) and checks in with LOCK INC on a
// shared counter; vCPU 0 prints once all N have.
//
//   dotnet run -c Release --project samples/HelloGuest [-- --backend kvm|interpreter|auto] [--cpus N]
using Iced.Intel;
using Virt;
using Virt.Boot;
using static Iced.Intel.AssemblerRegisters;

var backend = BackendKind.Auto;
int cpus = 1;
for (int i = 0; i < args.Length; i++)
{
    if (args[i] == "--cpus" && i + 1 < args.Length)
    {
        cpus = int.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture);
    }
    else if (args[i] == "--backend" && i + 1 < args.Length)
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

const ulong LoadAddress = 0x100000;
byte[] guest = AssembleGuest(LoadAddress, cpus, $"Hello from a Virt.Sdk guest ({cpus} vCPU{(cpus == 1 ? "" : "s")} checked in)\n");

try
{
    await using var vm = VirtualMachine.CreateBuilder()
        .WithName("hello")
        .WithMemoryMiB(16)
        .WithVcpus(cpus)
        .WithBackend(backend)
        .WithFlatBinary(guest, new GuestAddress(LoadAddress))
        .WithEntryPoint(new GuestAddress(LoadAddress), StartMode.Long64)
        .WithSerialConsole(Console.Out)
        .WithDebugExit()
        .Build();

    Console.WriteLine($"backend: {vm.BackendSelection.Name} ({vm.BackendSelection.Reason})");
    using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
    var exit = await vm.RunAsync(timeout.Token);
    Console.WriteLine($"guest stopped: {exit.Description}");
    return exit.Reason == StopReason.DebugExit ? exit.ExitCode ?? 0 : 1;
}
catch (InvalidOperationException e)
{
    Console.Error.WriteLine(e.Message);
    return 2;
}

// Long mode at CPL 0 on every vCPU: count this vCPU in; vCPU 0 waits for all of them, prints the
// zero-terminated message byte by byte to COM1, then writes exit code 0 to the debug-exit port.
static byte[] AssembleGuest(ulong origin, int cpus, string message)
{
    var a = new Assembler(64);
    var msg = a.CreateLabel();
    ulong counter = origin + 0x1000; // an aligned word after the code, zero in fresh RAM
    var wait = a.CreateLabel();
    var park = a.CreateLabel();
    var next = a.CreateLabel();
    var done = a.CreateLabel();
    a.@lock.inc(__qword_ptr[counter]);
    a.test(edi, edi);
    a.jnz(park);
    a.Label(ref wait);
    a.pause();
    a.cmp(__qword_ptr[counter], cpus);
    a.jb(wait);
    a.lea(rsi, __[msg]);
    a.mov(dx, 0x3F8);
    a.Label(ref next);
    a.lodsb();
    a.test(al, al);
    a.jz(done);
    a.@out(dx, al);
    a.jmp(next);
    a.Label(ref done);
    a.mov(dx, VirtualMachineBuilder.DefaultDebugExitPort);
    a.xor(eax, eax);
    a.@out(dx, al);
    a.Label(ref park);
    a.hlt();
    a.jmp(park);
    a.Label(ref msg);
    a.db(System.Text.Encoding.ASCII.GetBytes(message + "\0"));

    var writer = new BytesWriter();
    a.Assemble(writer, origin);
    return writer.Bytes.ToArray();
}

internal sealed class BytesWriter : CodeWriter
{
    public List<byte> Bytes { get; } = [];

    public override void WriteByte(byte value) => Bytes.Add(value);
}
