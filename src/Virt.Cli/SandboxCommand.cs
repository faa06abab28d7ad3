using System.CommandLine;
using Virt.Sandbox;

namespace Virt.Cli;

/// <summary>
/// <c>virt sandbox ./prog args</c>: runs a static x86-64 Linux executable in a sandbox micro-VM with hard limits. The
/// program's stdout and stderr go to the tool's; the tool exits with the program's status (128 + n for signal n, 124
/// when a limit ended the run, 125 when the sandbox could not run it).
/// </summary>
internal static class SandboxCommand
{
    /// <summary>Exit status when a limit (time, instructions, memory, output, system calls) or the policy ended the run.</summary>
    public const int LimitStatus = 124;

    /// <summary>Exit status when the program could not be run (bad executable, no backend, guest fault).</summary>
    public const int FailureStatus = 125;

    public static Command Create()
    {
        var program = new Argument<string>("program") { Description = "A static x86-64 Linux executable on this host." };
        var arguments = new Argument<string[]>("arguments") { Description = "Arguments for the program (put them after -- when they start with -).", Arity = ArgumentArity.ZeroOrMore };
        var memory = new Option<int>("--memory", "-m") { Description = "Memory limit in MiB (everything the program maps, its stack and page tables).", DefaultValueFactory = _ => 64 };
        var time = new Option<double>("--time", "-t") { Description = "Wall-time limit in seconds.", DefaultValueFactory = _ => 10 };
        var instructions = new Option<long?>("--instructions") { Description = "Instruction limit (on backends that count instructions: the interpreter)." };
        var output = new Option<long?>("--output-limit") { Description = "Most bytes of stdout plus stderr." };
        var syscalls = new Option<long?>("--syscalls") { Description = "Most system calls." };
        var environment = new Option<string[]>("--env", "-e") { Description = "NAME=value for the program's environment (empty by default).", Arity = ArgumentArity.ZeroOrMore };
        var backend = new Option<BackendKind>("--backend") { Description = "auto, kvm, whp or interpreter.", DefaultValueFactory = _ => BackendKind.Auto };
        var verbose = new Option<bool>("--verbose", "-v") { Description = "Print the backend, the outcome and the resources used on stderr." };
        var command = new Command("sandbox", "Run a static x86-64 Linux executable in a sandbox micro-VM with memory, time, output and system call limits.")
        {
            program, arguments, memory, time, instructions, output, syscalls, environment, backend, verbose,
        };
        command.SetAction(async (result, ct) =>
        {
            try
            {
                var builder = Sandbox.Sandbox.CreateBuilder()
                    .WithExecutable(result.GetValue(program)!)
                    .WithArguments(result.GetValue(arguments) ?? [])
                    .WithEnvironment(result.GetValue(environment) ?? [])
                    .WithMemoryLimit(checked((ulong)result.GetValue(memory) << 20))
                    .WithTimeLimit(TimeSpan.FromSeconds(result.GetValue(time)))
                    .WithBackend(result.GetValue(backend));
                if (result.GetValue(instructions) is { } n)
                {
                    builder = builder.WithInstructionLimit(n);
                }

                if (result.GetValue(output) is { } o)
                {
                    builder = builder.WithOutputLimit(o);
                }

                if (result.GetValue(syscalls) is { } s)
                {
                    builder = builder.WithSystemCallLimit(s);
                }

                await using var sandbox = builder.Build();
                ReadOnlyMemory<byte> stdin = Console.IsInputRedirected ? await ReadAllAsync(Console.OpenStandardInput(), ct).ConfigureAwait(false) : default;
                var run = await sandbox.RunAsync(stdin, ct).ConfigureAwait(false);
                using (var stdout = Console.OpenStandardOutput())
                {
                    await stdout.WriteAsync(run.Stdout, ct).ConfigureAwait(false);
                }

                using (var stderr = Console.OpenStandardError())
                {
                    await stderr.WriteAsync(run.Stderr, ct).ConfigureAwait(false);
                }

                if (result.GetValue(verbose) || run.Status is not (SandboxStatus.Exited or SandboxStatus.Signaled))
                {
                    Console.Error.WriteLine($"virt sandbox: {run} on {sandbox.BackendName}; {run.Usage.WallTime.TotalMilliseconds:F1} ms, {run.Usage.SystemCalls} system calls, peak memory {run.Usage.PeakMemoryBytes >> 10} KiB"
                        + (run.Usage.Instructions is { } i ? $", {i} instructions" : ""));
                }

                return StatusOf(run);
            }
            catch (Exception e) when (e is ArgumentException or InvalidOperationException or IOException or UnauthorizedAccessException or OverflowException or Virt.Boot.BootImageException)
            {
                Console.Error.WriteLine($"virt sandbox: {e.Message}");
                return FailureStatus;
            }
        });
        return command;
    }

    /// <summary>The tool's exit status for a run, as a shell reports a child's.</summary>
    internal static int StatusOf(SandboxResult run) => run.Status switch
    {
        SandboxStatus.Exited => run.ExitCode & 0xFF,
        SandboxStatus.Signaled => 128 + (run.Signal ?? 0),
        SandboxStatus.TimeLimitExceeded or SandboxStatus.MemoryLimitExceeded or SandboxStatus.OutputLimitExceeded
            or SandboxStatus.SyscallLimitExceeded or SandboxStatus.ForbiddenOperation => LimitStatus,
        _ => FailureStatus,
    };

    private static async Task<ReadOnlyMemory<byte>> ReadAllAsync(Stream stream, CancellationToken cancellationToken)
    {
        using var buffer = new MemoryStream();
        await stream.CopyToAsync(buffer, cancellationToken).ConfigureAwait(false);
        return buffer.ToArray();
    }
}
