using System.Globalization;

namespace Virt;

/// <summary>Names for VMs built without <see cref="VirtualMachineBuilder.WithName"/>: <c>vm-1</c>, <c>vm-2</c>, ... unique in the process, so logs, thread names and traces tell them apart.</summary>
internal static class DefaultMachineNames
{
    private static long s_last;

    /// <summary>The next unused default name.</summary>
    public static string Next() => "vm-" + Interlocked.Increment(ref s_last).ToString(CultureInfo.InvariantCulture);
}
