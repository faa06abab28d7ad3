namespace Virt.X86;

/// <summary>The outcome of a <see cref="PageWalker"/> walk: the translation and what the tables allow, or why it faulted.</summary>
public readonly record struct PageWalkResult
{
    internal PageWalkResult(PageWalkStatus status, ulong physicalAddress, ulong pageSize, PagePermissions permissions, PageFaultErrorCode errorCode)
    {
        Status = status;
        PhysicalAddress = physicalAddress;
        PageSize = pageSize;
        Permissions = permissions;
        ErrorCode = errorCode;
    }

    /// <summary>How the walk ended.</summary>
    public PageWalkStatus Status { get; }

    /// <summary>Whether the access is allowed; <see cref="PhysicalAddress"/> is where it goes.</summary>
    public bool Succeeded => Status == PageWalkStatus.Translated;

    /// <summary>
    /// Whether the address has a translation, allowed for this access or not (<see cref="PageWalkStatus.Translated"/>
    /// or <see cref="PageWalkStatus.ProtectionViolation"/>); <see cref="PhysicalAddress"/> and <see cref="Permissions"/> are set.
    /// </summary>
    public bool IsMapped => Status is PageWalkStatus.Translated or PageWalkStatus.ProtectionViolation;

    /// <summary>The guest physical address the linear address maps to, when <see cref="IsMapped"/>; otherwise 0.</summary>
    public ulong PhysicalAddress { get; }

    /// <summary>Bytes in the page that maps the address (4 KiB, 2 MiB, 4 MiB or 1 GiB), when <see cref="IsMapped"/>; otherwise 0.</summary>
    public ulong PageSize { get; }

    /// <summary>Bytes from <see cref="PhysicalAddress"/> to the end of its page: how far the translation holds without another walk.</summary>
    public ulong BytesToPageEnd => PageSize == 0 ? 0 : PageSize - (PhysicalAddress & (PageSize - 1));

    /// <summary>What the tables allow for the page, when <see cref="IsMapped"/>; otherwise <see cref="PagePermissions.None"/>.</summary>
    public PagePermissions Permissions { get; }

    /// <summary>
    /// The error code a processor pushes with the #PF for this access when it faults (zero when <see cref="Succeeded"/>,
    /// and for <see cref="PageWalkStatus.NonCanonical"/>, which is a #GP).
    /// </summary>
    public PageFaultErrorCode ErrorCode { get; }
}
