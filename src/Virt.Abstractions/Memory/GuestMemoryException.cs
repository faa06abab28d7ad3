namespace Virt.Memory;

/// <summary>A guest memory access fell outside guest RAM, crossed a hole, or wrote to ROM.</summary>
public sealed class GuestMemoryException : Exception
{
    /// <summary>Creates the exception for an access of <paramref name="length"/> bytes at <paramref name="address"/>.</summary>
    public GuestMemoryException(GuestAddress address, ulong length, string reason)
        : base($"Guest memory access of {length} byte(s) at {address} failed: {reason}")
    {
        Address = address;
        Length = length;
    }

    /// <summary>Creates the exception with a message.</summary>
    public GuestMemoryException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and inner exception.</summary>
    public GuestMemoryException(string message, Exception innerException) : base(message, innerException) { }

    /// <summary>Creates the exception.</summary>
    public GuestMemoryException() { }

    /// <summary>The guest address of the failed access.</summary>
    public GuestAddress Address { get; }

    /// <summary>The length of the failed access in bytes.</summary>
    public ulong Length { get; }
}
