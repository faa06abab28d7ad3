using System.Diagnostics;
using System.Text;
using Xunit;

namespace Virt.Sandbox.Tests;

/// <summary>Runs Debian's programs natively, the way the sandbox runs them, for byte-for-byte comparison.</summary>
internal static class NativeJobs
{
    /// <summary>Skips the test when <paramref name="path"/> is not installed on this host.</summary>
    public static void RequireProgram(string path)
    {
        if (!File.Exists(path))
        {
            Assert.Skip($"Skipped: {path} is not installed (see .ci/run for the Debian packages the tests use).");
        }
    }

    /// <summary>Runs the job natively in an empty directory with an empty environment, as the sandbox runs it.</summary>
    public static (int ExitCode, byte[] Stdout, string Stderr) Run(string program, string[] arguments, string stdin) =>
        Run(program, arguments, Encoding.UTF8.GetBytes(stdin));

    /// <summary>Runs the job natively in an empty directory with an empty environment, as the sandbox runs it.</summary>
    public static (int ExitCode, byte[] Stdout, string Stderr) Run(string program, string[] arguments, byte[] stdin)
    {
        string dir = Directory.CreateTempSubdirectory("virt-sandbox-native-").FullName;
        try
        {
            var psi = new ProcessStartInfo(program, arguments)
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                RedirectStandardInput = true,
                UseShellExecute = false,
                WorkingDirectory = dir,
            };
            psi.Environment.Clear();
            using var p = Process.Start(psi)!;
            var stdout = new MemoryStream();
            var copy = p.StandardOutput.BaseStream.CopyToAsync(stdout);
            var stderr = p.StandardError.ReadToEndAsync();
            try
            {
                p.StandardInput.BaseStream.Write(stdin);
                p.StandardInput.Close();
            }
            catch (IOException)
            {
                // The program exited without reading all of its input.
            }

            p.WaitForExit();
            copy.Wait();
            return (p.ExitCode, stdout.ToArray(), stderr.Result);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
