namespace Virt.Boot;

/// <summary>
/// A kernel image, initrd or boot parameter cannot be loaded: the image is truncated or corrupt, it
/// does not support a boot protocol this loader needs, or it does not fit in guest memory.
/// </summary>
/// <remarks>The message names the field that is wrong and what to do about it.</remarks>
public sealed class BootImageException : Exception
{
    /// <summary>Creates the exception for <paramref name="field"/> with <paramref name="message"/>.</summary>
    public BootImageException(string field, string message)
        : base($"{field}: {message}")
    {
        Field = field;
    }

    /// <summary>Creates the exception with a message and no field.</summary>
    public BootImageException(string message) : base(message)
    {
        Field = string.Empty;
    }

    /// <summary>Creates the exception with a message and inner exception, and no field.</summary>
    public BootImageException(string message, Exception innerException) : base(message, innerException)
    {
        Field = string.Empty;
    }

    /// <summary>Creates the exception.</summary>
    public BootImageException()
    {
        Field = string.Empty;
    }

    /// <summary>
    /// The header field or input that is wrong, spelled as in its specification (e.g. <c>boot_flag</c>,
    /// <c>version</c>, <c>initrd</c>, <c>cmdline_size</c>); empty when there is none.
    /// </summary>
    public string Field { get; }
}
