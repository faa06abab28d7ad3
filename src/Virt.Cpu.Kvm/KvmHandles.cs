using System.Runtime.InteropServices;

namespace Virt.Cpu.Kvm;

/// <summary>A KVM file descriptor, closed exactly once when the handle is released.</summary>
internal abstract class KvmFileDescriptorHandle : SafeHandle
{
    protected KvmFileDescriptorHandle()
        : base(invalidHandleValue: -1, ownsHandle: true)
    {
    }

    public override bool IsInvalid => handle < 0;

    /// <summary>The descriptor number, for messages only.</summary>
    public int Descriptor => (int)handle;

    internal void Adopt(int fd) => SetHandle(fd);

    protected override bool ReleaseHandle() => Interop.Libc.Close((int)handle) == 0;
}

/// <summary>The system descriptor: an open <c>/dev/kvm</c>.</summary>
internal sealed class KvmSystemHandle : KvmFileDescriptorHandle;

/// <summary>A VM descriptor returned by <c>KVM_CREATE_VM</c>.</summary>
internal sealed class KvmVmHandle : KvmFileDescriptorHandle;

/// <summary>A vCPU descriptor returned by <c>KVM_CREATE_VCPU</c>.</summary>
internal sealed class KvmVcpuHandle : KvmFileDescriptorHandle;
