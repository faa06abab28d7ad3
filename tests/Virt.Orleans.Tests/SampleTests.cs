using System.Diagnostics;
using System.Reflection;
using Virt.Testing;
using Xunit;

namespace Virt.Orleans.Tests;

/// <summary>samples/OrleansCluster runs and does what its comment promises (it is built before this project).</summary>
public sealed class SampleTests
{
    private static readonly string Configuration =
        typeof(SampleTests).Assembly.GetCustomAttribute<AssemblyConfigurationAttribute>()?.Configuration ?? "Release";

    [Fact]
    public async Task OrleansCluster_spreads_ten_vms_drains_a_silo_live_and_brings_vms_back_after_a_hard_stop()
    {
        string root = RepositoryPaths.Root ?? throw new InvalidOperationException("The repository root (Virt.Sdk.sln) was not found.");
        string dll = Path.Combine(root, "samples", "OrleansCluster", "bin", Configuration, "net10.0", "OrleansCluster.dll");
        Assert.True(File.Exists(dll), $"{dll} is missing; build the test project first.");
        var psi = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        psi.ArgumentList.Add(dll);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
        var stderr = p.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        timeout.CancelAfter(TimeSpan.FromMinutes(4));
        try
        {
            await p.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            p.Kill(entireProcessTree: true);
            throw;
        }

        string output = await stdout + await stderr;
        Assert.True(p.ExitCode == 0, output);
        Assert.Contains("placed by capacity:", output, StringComparison.Ordinal);
        Assert.Matches(@"drained B in \d+ ms: (\d+) VMs moved \(\1 live\), 0 failed", output);
        Assert.Contains("restored from its snapshot", output, StringComparison.Ordinal);
        Assert.Contains("all 10 VMs answer on A with their guest state as saved", output, StringComparison.Ordinal);
    }
}
