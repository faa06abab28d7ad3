namespace Virt.X86;

/// <summary>
/// An ELF file is structurally broken: truncated, not ELF, or with a header or program header whose numbers do
/// not fit the file. The exception names the field (<see cref="Field"/>) and where it is (<see cref="Location"/>).
/// </summary>
/// <remarks>Loaders catch it and report it as their own error with their own advice; it says nothing about whether a loader accepts the file.</remarks>
public sealed class ElfFormatException : Exception
{
    /// <summary>Creates the exception for header field <paramref name="field"/> with <paramref name="reason"/>.</summary>
    public ElfFormatException(string field, string reason)
        : this(field, field, -1, reason)
    {
    }

    /// <summary>Creates the exception with a message and no field.</summary>
    public ElfFormatException() : this(string.Empty)
    {
    }

    /// <summary>Creates the exception with a message and no field.</summary>
    public ElfFormatException(string message) : base(message)
    {
        Field = Location = string.Empty;
        Reason = message;
        ProgramHeaderIndex = -1;
    }

    /// <summary>Creates the exception with a message and inner exception, and no field.</summary>
    public ElfFormatException(string message, Exception innerException) : base(message, innerException)
    {
        Field = Location = string.Empty;
        Reason = message;
        ProgramHeaderIndex = -1;
    }

    private ElfFormatException(string field, string location, int programHeaderIndex, string reason)
        : base($"{location}: {reason}")
    {
        Field = field;
        Location = location;
        ProgramHeaderIndex = programHeaderIndex;
        Reason = reason;
    }

    /// <summary>The field as the ELF specification spells it: <c>e_ident</c>, <c>e_phoff</c>, <c>p_offset</c>, <c>p_filesz</c>.</summary>
    public string Field { get; }

    /// <summary>
    /// Where the field is: the field itself for the file header, with the <c>e_ident</c> element
    /// (<c>e_ident[EI_CLASS]</c>), or prefixed with the program header (<c>program header 2 p_offset</c>).
    /// </summary>
    public string Location { get; }

    /// <summary>The program header the field belongs to, or -1 for the file header.</summary>
    public int ProgramHeaderIndex { get; }

    /// <summary>What is wrong, without the location.</summary>
    public string Reason { get; }

    internal static ElfFormatException Ident(string element, string reason) => new("e_ident", $"e_ident[{element}]", -1, reason);

    internal static ElfFormatException InProgramHeader(int index, string field, string reason) =>
        new(field, $"program header {index} {field}", index, reason);

    internal static ElfFormatException InProgramHeader(int index, string field, string location, string reason) =>
        new(field, $"program header {index} {location}", index, reason);
}
