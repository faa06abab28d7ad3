using Xunit;

namespace Virt.Testing;

/// <summary>Skips (or, under <c>VIRT_REQUIRE_KVM=1</c>, fails) tests whose host requirement is missing.</summary>
public static class HostRequirements
{
    /// <summary>Whether <c>VIRT_REQUIRE_KVM=1</c> is set: missing KVM then fails instead of skipping.</summary>
    public static bool KvmRequired => Environment.GetEnvironmentVariable("VIRT_REQUIRE_KVM") == "1";

    /// <summary>Why KVM cannot be used here, or <see langword="null"/> when it can.</summary>
    public static string? KvmUnavailableReason()
    {
        if (!OperatingSystem.IsLinux())
        {
            return "KVM needs Linux.";
        }

        if (!File.Exists("/dev/kvm"))
        {
            return "/dev/kvm does not exist (no KVM on this host).";
        }

        try
        {
            using var f = new FileStream("/dev/kvm", FileMode.Open, FileAccess.ReadWrite);
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return "/dev/kvm is not accessible to this user (join the 'kvm' group).";
        }
        catch (IOException e)
        {
            return $"/dev/kvm cannot be opened: {e.Message}";
        }
    }

    /// <summary>Skips when KVM is missing, even under <c>VIRT_REQUIRE_KVM=1</c> (for tests that only use KVM incidentally).</summary>
    public static void RequireKvmOrSkip()
    {
        if (KvmUnavailableReason() is { } reason)
        {
            Assert.Skip($"Skipped: {reason}");
        }
    }

    /// <summary>Call first in a test that needs KVM.</summary>
    public static void RequireKvm()
    {
        if (KvmUnavailableReason() is { } reason)
        {
            if (KvmRequired)
            {
                Assert.Fail($"VIRT_REQUIRE_KVM=1 but KVM is unavailable: {reason}");
            }

            Assert.Skip($"Skipped: {reason} Set up KVM to run this test.");
        }
    }
}
