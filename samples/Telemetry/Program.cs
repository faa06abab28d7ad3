// Telemetry: Virt.Sdk's and Virt.Sandbox's metrics and traces through OpenTelemetry's console exporter. Runs a tiny
// guest on the interpreter and, when a static busybox is installed, one sandboxed command, then prints the spans
// (virt.vm.run, virt.sandbox.run) and the metrics (virt.vm.exits, virt.vm.stops, virt.sandbox.runs, ...).
//
//   dotnet run -c Release --project samples/Telemetry
using OpenTelemetry;
using OpenTelemetry.Metrics;
using OpenTelemetry.Trace;
using Virt;
using Virt.Boot;
using Virt.Network;
using Virt.Sandbox;
using Virt.Storage;

using var tracing = Sdk.CreateTracerProviderBuilder()
    .AddSource(VirtualizationTelemetry.ActivitySourceName, SandboxTelemetry.ActivitySourceName)
    .AddConsoleExporter()
    .Build();
using var metrics = Sdk.CreateMeterProviderBuilder()
    .AddMeter(VirtualizationTelemetry.MeterName, SandboxTelemetry.MeterName, StorageTelemetry.MeterName, NetworkTelemetry.MeterName)
    .AddConsoleExporter()
    .Build();

// Long-mode guest: "Hi\n" on COM1, then exit code 0 on the debug-exit port.
byte[] guest =
[
    0x66, 0xBA, 0xF8, 0x03, 0xB0, 0x48, 0xEE, 0xB0, 0x69, 0xEE, 0xB0, 0x0A, 0xEE,
    0x66, 0xBA, 0x01, 0x05, 0x31, 0xC0, 0xEE, 0xF4,
];
await using (var vm = VirtualMachine.CreateBuilder()
    .WithName("telemetry-demo")
    .WithInterpreter()
    .WithMemoryMiB(16)
    .WithFlatBinary(guest, new GuestAddress(0x100000))
    .WithEntryPoint(new GuestAddress(0x100000), StartMode.Long64)
    .WithSerialConsole(Console.Out)
    .WithDebugExit()
    .Build())
{
    var exit = await vm.RunAsync();
    Console.WriteLine($"guest stopped: {exit.Description}");
}

string? busybox = new[] { "/bin/busybox", "/usr/bin/busybox" }.FirstOrDefault(File.Exists);
if (busybox is not null)
{
    await using var sandbox = Sandbox.CreateBuilder().WithExecutable(busybox).WithArguments("echo", "hello from a sandbox").Build();
    var result = await sandbox.RunAsync();
    Console.Write(result.StdoutText);
}

metrics.ForceFlush();
return 0;
