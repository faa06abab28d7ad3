using Orleans;

namespace Virt.Orleans;

/// <summary>
/// The cluster has no room for what was asked: no silo has the memory, vCPUs or backend a VM needs, or every silo's
/// sandbox pool for a program is busy with its queue full. Retry later, add silos, or ask for less.
/// </summary>
[GenerateSerializer]
public sealed class ClusterCapacityException : Exception
{
    /// <summary>Creates the exception with a default message.</summary>
    public ClusterCapacityException()
        : base("The cluster has no room for the request.")
    {
    }

    /// <summary>Creates the exception with <paramref name="message"/>, which says what did not fit where.</summary>
    public ClusterCapacityException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with <paramref name="message"/> and the exception that caused it.</summary>
    public ClusterCapacityException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}
