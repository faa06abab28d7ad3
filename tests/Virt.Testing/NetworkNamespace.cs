using System.Diagnostics;
using System.Runtime.InteropServices;
using Xunit;

namespace Virt.Testing;

/// <summary>
/// A throw-away Linux network namespace (<c>ip netns add</c>) so TAP tests keep every interface, address and frame
/// away from the host's network. Skips the test where that is impossible.
/// </summary>
public sealed partial class NetworkNamespace : IDisposable
{
    private const int CLONE_NEWNET = 0x40000000;

    private NetworkNamespace(string name) => Name = name;

    /// <summary>The namespace's name (under /var/run/netns).</summary>
    public string Name { get; }

    /// <summary>Creates a namespace, or skips the test with the reason.</summary>
    public static NetworkNamespace CreateOrSkip()
    {
        if (!OperatingSystem.IsLinux())
        {
            Assert.Skip("TAP tests need Linux.");
        }

        if (!File.Exists("/dev/net/tun"))
        {
            Assert.Skip("TAP tests need /dev/net/tun (load the tun module).");
        }

        if (FindIp() is null)
        {
            Assert.Skip("TAP tests need the 'ip' tool (apt-get install -y iproute2).");
        }

        string name = "virt-test-" + Guid.NewGuid().ToString("N")[..8];
        var (code, output) = Run($"netns add {name}");
        if (code != 0)
        {
            Assert.Skip($"Cannot create a network namespace ('ip netns add' failed: {output.Trim()}); TAP tests need CAP_SYS_ADMIN and CAP_NET_ADMIN.");
        }

        return new NetworkNamespace(name);
    }

    /// <summary>Runs <c>ip</c> inside the namespace and fails the test if it fails.</summary>
    public void Ip(string arguments)
    {
        var (code, output) = Run($"-n {Name} {arguments}");
        Assert.True(code == 0, $"ip -n {Name} {arguments} failed: {output}");
    }

    /// <summary>Runs <paramref name="action"/> on a fresh thread that has entered the namespace.</summary>
    public T Enter<T>(Func<T> action)
    {
        T? result = default;
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                using var ns = File.OpenHandle($"/var/run/netns/{Name}", FileMode.Open, FileAccess.Read);
                if (SetNs(ns, CLONE_NEWNET) != 0)
                {
                    throw new IOException($"setns into {Name} failed: errno {Marshal.GetLastPInvokeError()}");
                }

                result = action();
            }
            catch (Exception e)
            {
                failure = e;
            }
        });
        thread.Start();
        thread.Join();
        if (failure is not null)
        {
            throw new InvalidOperationException($"Running inside namespace {Name} failed: {failure.Message}", failure);
        }

        return result!;
    }

    /// <summary>Deletes the namespace and the interfaces left in it.</summary>
    public void Dispose() => Run($"netns del {Name}");

    private static string? FindIp() =>
        new[] { "/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip" }.FirstOrDefault(File.Exists);

    private static (int Code, string Output) Run(string arguments)
    {
        var psi = new ProcessStartInfo(FindIp()!, arguments)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        using var p = Process.Start(psi)!;
        string output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, output);
    }

    [LibraryImport("libc", EntryPoint = "setns", SetLastError = true)]
    private static partial int SetNs(Microsoft.Win32.SafeHandles.SafeFileHandle fd, int nstype);
}
