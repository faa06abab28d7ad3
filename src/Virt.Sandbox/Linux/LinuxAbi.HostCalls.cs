using System.Text;

namespace Virt.Sandbox.Linux;

// The reserved calls of virt_sandbox.h: a call to a host function the embedder registered, and the ready point.
internal sealed partial class LinuxAbi
{
    /// <summary>Reserved system call: call a host function (see virt_sandbox.h).</summary>
    public const long HostCallNumber = 0x5653_0000;

    /// <summary>Reserved system call: the program is initialised and ready; snapshot here.</summary>
    public const long ReadyNumber = 0x5653_0001;

    private long HostCall(ulong namePointer, ulong nameLength, ulong input, ulong inputLength, ulong output, ulong outputCapacity)
    {
        if (nameLength == 0 || nameLength > 256 || inputLength > (ulong)_config.MaxHostCallBytes)
        {
            return -Errno.EINVAL;
        }

        var nameBytes = new byte[nameLength];
        var inputBytes = new byte[inputLength];
        if (!ReadUser(namePointer, nameBytes) || !ReadUser(input, inputBytes))
        {
            return -Errno.EFAULT;
        }

        string name = Encoding.UTF8.GetString(nameBytes);
        if (!_config.HostFunctions.TryGetValue(name, out var function))
        {
            return -Errno.ENOENT;
        }

        ReadOnlyMemory<byte> result;
#pragma warning disable CA1031 // A host function's failure is reported to the guest as EIO; it must not unwind the vCPU loop.
        try
        {
            result = function(inputBytes);
        }
        catch (Exception)
        {
            return -Errno.EIO;
        }
#pragma warning restore CA1031

        if (result.Length > _config.MaxHostCallBytes)
        {
            return -Errno.EIO;
        }

        int n = (int)Math.Min((ulong)result.Length, outputCapacity);
        return WriteUser(output, result.Span[..n]) ? result.Length : -Errno.EFAULT;
    }
}
