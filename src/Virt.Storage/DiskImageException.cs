namespace Virt.Storage;

/// <summary>What went wrong with a disk image file.</summary>
public enum DiskImageError
{
    /// <summary>Something else (see the message and inner exception).</summary>
    Other = 0,

    /// <summary>The file does not exist.</summary>
    NotFound,

    /// <summary>Another VM (or process) has the image open in a way that conflicts with this use.</summary>
    InUse,

    /// <summary>The file already exists and would be overwritten.</summary>
    AlreadyExists,

    /// <summary>The file is not what it should be (e.g. not an overlay, or its base changed size).</summary>
    InvalidFormat,

    /// <summary>This process may not open the file (or create it) in the mode asked for: file or directory permissions.</summary>
    AccessDenied,
}

/// <summary>
/// A disk image could not be created, opened, committed or deleted. <see cref="Error"/> says why, the message
/// says what to do.
/// </summary>
public sealed class DiskImageException : IOException
{
    /// <summary>Creates the exception for <paramref name="path"/>.</summary>
    public DiskImageException(string path, DiskImageError error, string message, Exception? innerException = null)
        : base(message, innerException)
    {
        ImagePath = path;
        Error = error;
    }

    /// <summary>Creates the exception.</summary>
    public DiskImageException() { }

    /// <summary>Creates the exception with a message.</summary>
    public DiskImageException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and inner exception.</summary>
    public DiskImageException(string message, Exception innerException) : base(message, innerException) { }

    /// <summary>The image file concerned.</summary>
    public string? ImagePath { get; }

    /// <summary>What went wrong.</summary>
    public DiskImageError Error { get; }
}
