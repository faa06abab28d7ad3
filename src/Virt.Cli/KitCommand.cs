using System.CommandLine;
using System.Diagnostics;

namespace Virt.Cli;

/// <summary>
/// <c>virt kit</c>: fetches Debian's cloud kernel and builds the busybox initramfs that <c>virt run</c> boots, by running
/// the repository's scripts/get-linux-guest.sh (carried inside the tool) with progress on the terminal. Needs bash,
/// apt-get (Debian or Ubuntu), cpio and root rights or sudo for the packages it installs.
/// </summary>
internal static class KitCommand
{
    private const string LogPrefix = "get-linux-guest: ";

    public static Command Create()
    {
        var output = new Option<string?>("--output", "-o")
        {
            Description = $"Where to put the kit. Default: {GuestKit.EnvironmentVariable}, else artifacts/linux in a clone of the repository (the current directory or above), else {GuestKit.UserDirectory}.",
        };
        var force = new Option<bool>("--force") { Description = "Rebuild the initramfs even when it is up to date." };
        var quiet = new Option<bool>("--quiet", "-q") { Description = "No progress lines, only errors." };
        var command = new Command("kit", "Fetch the Linux guest kit (Debian's cloud kernel and a busybox initramfs) that 'virt run' boots.")
        {
            output, force, quiet,
        };
        command.SetAction((result, ct) => RunAsync(result.GetValue(output), result.GetValue(force), result.GetValue(quiet), ct));
        return command;
    }

    private static async Task<int> RunAsync(string? outputDirectory, bool force, bool quiet, CancellationToken cancellationToken)
    {
        if (!OperatingSystem.IsLinux())
        {
            Console.Error.WriteLine("virt kit: building the kit needs Linux with apt (Debian or Ubuntu). Elsewhere, copy a kit folder (vmlinuz, initramfs.cpio) from a Linux machine and pass it with --kit.");
            return 2;
        }

        var (directory, source) = GuestKit.Locate(outputDirectory);
        Directory.CreateDirectory(directory);
        string scripts = ExtractScripts();
        string script = Path.Combine(scripts, "scripts", KitFiles[0]);
        try
        {
            var psi = new ProcessStartInfo("bash")
            {
                RedirectStandardError = true,
                RedirectStandardOutput = true,
                UseShellExecute = false,
            };
            psi.ArgumentList.Add(script);
            if (force)
            {
                psi.ArgumentList.Add("--force");
            }

            psi.Environment[GuestKit.EnvironmentVariable] = directory;
            if (!quiet)
            {
                Console.Error.WriteLine($"virt kit: building the guest kit in {directory} (from {source})");
            }

            using var process = Process.Start(psi) ?? throw new InvalidOperationException("bash could not be started.");
            var progress = new KitProgress(Console.Error, quiet);
            var errors = PumpAsync(process.StandardError, progress, cancellationToken);
            var outputs = PumpAsync(process.StandardOutput, progress, cancellationToken);
            try
            {
                await process.WaitForExitAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                process.Kill(entireProcessTree: true);
                throw;
            }

            await Task.WhenAll(errors, outputs).ConfigureAwait(false);
            progress.Finish();
            if (process.ExitCode != 0)
            {
                Console.Error.WriteLine($"virt kit: the kit script failed (exit status {process.ExitCode}); its last lines:");
                foreach (string line in progress.Tail)
                {
                    Console.Error.WriteLine("  " + line);
                }

                return 1;
            }

            Console.WriteLine($"guest kit ready: {directory} (kernel {GuestKit.KernelRelease(directory) ?? "of unknown release"})");
            return 0;
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            Console.Error.WriteLine($"virt kit: bash could not be started ({e.Message}); install bash.");
            return 2;
        }
        finally
        {
            Directory.Delete(scripts, recursive: true);
        }
    }

    /// <summary>The kit script and the guest programs it compiles (it finds them beside itself), as embedded in the tool.</summary>
    private static readonly string[] KitFiles = ["get-linux-guest.sh", "virt-agent.c", "virt-modload.c"];

    /// <summary>
    /// Writes the embedded kit files to DIR/scripts in a new temporary DIR, which it returns. Their time stamps are
    /// the tool's own, so the script's "initramfs is newer than its sources" test rebuilds the initramfs after a tool
    /// update and not on every run.
    /// </summary>
    private static string ExtractScripts()
    {
        string root = Directory.CreateTempSubdirectory("virt-kit-").FullName;
        string dir = Directory.CreateDirectory(Path.Combine(root, "scripts")).FullName;
        string assembly = typeof(KitCommand).Assembly.Location;
        foreach (string name in KitFiles)
        {
            string path = Path.Combine(dir, name);
            using (var resource = typeof(KitCommand).Assembly.GetManifestResourceStream(name)
                ?? throw new InvalidOperationException($"The tool was built without its kit file {name}."))
            using (var file = File.Create(path))
            {
                resource.CopyTo(file);
            }

            if (assembly.Length > 0)
            {
                File.SetLastWriteTimeUtc(path, File.GetLastWriteTimeUtc(assembly));
            }
        }

        return root;
    }

    private static async Task PumpAsync(StreamReader reader, KitProgress progress, CancellationToken cancellationToken)
    {
        while (await reader.ReadLineAsync(cancellationToken).ConfigureAwait(false) is { } line)
        {
            progress.Report(line.StartsWith(LogPrefix, StringComparison.Ordinal) ? line[LogPrefix.Length..] : line);
        }
    }

    /// <summary>
    /// Shows the script's steps: on a terminal one line that is rewritten (step number, elapsed time, what it does now),
    /// otherwise one line per step. Keeps the last lines for an error report.
    /// </summary>
    private sealed class KitProgress(TextWriter output, bool quiet)
    {
        private const int TailLines = 15;
        private readonly Stopwatch _clock = Stopwatch.StartNew();
        private readonly Queue<string> _tail = new();
        private readonly bool _terminal = !Console.IsErrorRedirected;
        private readonly Lock _lock = new();
        private int _step;

        public IEnumerable<string> Tail => _tail;

        public void Report(string line)
        {
            lock (_lock)
            {
                _tail.Enqueue(line);
                if (_tail.Count > TailLines)
                {
                    _tail.Dequeue();
                }

                if (quiet)
                {
                    return;
                }

                _step++;
                string text = $"[{_step,3}] {_clock.Elapsed:mm\\:ss} {line}";
                if (_terminal)
                {
                    int width = Math.Max(20, SafeWindowWidth() - 1);
                    output.Write("\r" + (text.Length > width ? text[..width] : text.PadRight(width)));
                }
                else
                {
                    output.WriteLine(text);
                }
            }
        }

        public void Finish()
        {
            if (!quiet && _terminal && _step > 0)
            {
                output.WriteLine();
            }
        }

        private static int SafeWindowWidth()
        {
            try
            {
                return Console.WindowWidth > 0 ? Console.WindowWidth : 80;
            }
            catch (IOException)
            {
                return 80;
            }
        }
    }
}
