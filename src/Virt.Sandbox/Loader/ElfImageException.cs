namespace Virt.Sandbox;

/// <summary>The executable given to a sandbox is not a static x86-64 Linux ELF file it can load. Names the field that is wrong.</summary>
public sealed class ElfImageException : Exception
{
    /// <summary>Creates the exception for <paramref name="field"/>.</summary>
    public ElfImageException(string field, string message)
        : base($"Bad executable: {field}: {message}")
    {
        Field = field;
    }

    /// <summary>Creates the exception.</summary>
    public ElfImageException() { }

    /// <summary>Creates the exception.</summary>
    public ElfImageException(string message) : base(message) { }

    /// <summary>Creates the exception.</summary>
    public ElfImageException(string message, Exception innerException) : base(message, innerException) { }

    /// <summary>The ELF field (e.g. <c>e_machine</c>, <c>p_filesz</c>) that made the file unusable.</summary>
    public string Field { get; } = "";
}
