using System.CommandLine;
using System.Runtime.InteropServices;
using Virt.Cpu;

namespace Virt.Cli;

/// <summary><c>virt doctor</c>: what this host can run, and why.</summary>
internal static class DoctorCommand
{
    public static Command Create()
    {
        var kit = new Option<string?>("--kit") { Description = "The guest kit folder to check (default: see 'virt kit --help')." };
        var command = new Command("doctor", "Report what this host can run: KVM (with or without hardware virtualization), WHP, the interpreter, TAP networking and the Linux guest kit, and why.")
        {
            kit,
        };
        command.SetAction(result => Run(result.GetValue(kit), Console.Out));
        return command;
    }

    /// <summary>Writes the report; returns 0 (the interpreter always runs, so every host can run something).</summary>
    internal static int Run(string? kitDirectory, TextWriter output)
    {
        output.WriteLine($"host: {RuntimeInformation.OSDescription}, {RuntimeInformation.ProcessArchitecture}, .NET {Environment.Version}, {Environment.ProcessorCount} processors");

        var kvm = BackendSelector.Create(BackendKind.Kvm).GetAvailability();
        Line(output, kvm.IsAvailable ? (kvm.SlowKernelMode is null ? "ok" : "partial") : "no", "kvm", kvm.Reason);
        if (kvm.IsAvailable)
        {
            Line(output, kvm.SlowKernelMode is null ? "ok" : "no", "kvm hardware virtualization", kvm.SlowKernelMode is null
                ? "guest kernels run at hardware speed"
                : $"{kvm.SlowKernelMode}. Sandboxes and user-mode guests still run natively; Linux guests use the interpreter unless --backend kvm is given");
        }

        var whp = BackendSelector.Create(BackendKind.Whp).GetAvailability();
        Line(output, whp.IsAvailable ? "ok" : "no", "whp", whp.Reason);

        var interpreter = BackendSelector.Create(BackendKind.Interpreter).GetAvailability();
        Line(output, interpreter.IsAvailable ? "ok" : "no", "interpreter", interpreter.Reason);

        if (OperatingSystem.IsLinux())
        {
            bool? netAdmin = HostCapabilities.HasNetAdmin();
            var (tunUsable, tunDetail) = HostCapabilities.TunDevice();
            bool tap = netAdmin == true && tunUsable;
            string why = netAdmin switch
            {
                true => "this process holds CAP_NET_ADMIN",
                false => "this process lacks CAP_NET_ADMIN (run as root, or use a persistent TAP owned by this user: ip tuntap add mode tap user $USER)",
                null => "CAP_NET_ADMIN could not be read from /proc/self/status",
            };
            Line(output, tap ? "ok" : "no", "tap networking", $"{why}; {tunDetail}");
        }
        else
        {
            Line(output, "no", "tap networking", "TAP interfaces need Linux");
        }

        Line(output, "ok", "user-mode networking", "needs no rights (virt run --net user)");

        var (kit, source) = GuestKit.Locate(kitDirectory);
        if (GuestKit.IsComplete(kit))
        {
            string release = GuestKit.KernelRelease(kit) is { } r ? $", kernel {r}" : "";
            Line(output, "ok", "linux guest kit", $"{kit} (from {source}{release})");
        }
        else
        {
            Line(output, "no", "linux guest kit", $"no {GuestKit.KernelFile} and {GuestKit.InitrdFile} in {kit} (from {source}); run: virt kit");
        }

        output.WriteLine();
        output.WriteLine($"linux guests run on: {Describe(kernelModeGuest: true)}");
        output.WriteLine($"sandboxes run on:    {Describe(kernelModeGuest: false)}");
        return 0;
    }

    private static string Describe(bool kernelModeGuest)
    {
        try
        {
            var selection = BackendSelector.Select(BackendKind.Auto, null, kernelModeGuest);
            return $"{selection.Name} ({selection.Reason})";
        }
        catch (InvalidOperationException e)
        {
            return "nothing: " + e.Message;
        }
    }

    private static void Line(TextWriter output, string status, string what, string detail) =>
        output.WriteLine($"  [{status}]{new string(' ', Math.Max(1, 8 - status.Length))}{what}: {detail}");
}
