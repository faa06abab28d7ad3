using System.Runtime.InteropServices;

namespace Virt.Cpu.Kvm;

internal static partial class Interop
{
    internal static partial class Kvm
    {
        /// <summary><c>struct kvm_userspace_memory_region</c>.</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct KvmUserspaceMemoryRegion
        {
            internal const int Size = 32;
            internal uint Slot;
            internal uint Flags;
            internal ulong GuestPhysAddr;
            /// <summary>Bytes; 0 deletes the slot.</summary>
            internal ulong MemorySize;
            internal ulong UserspaceAddr;
        }

        /// <summary><c>struct kvm_dirty_log</c>.</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct KvmDirtyLog
        {
            internal const int Size = 16;
            internal uint Slot;
            private readonly uint _padding;
            internal ulong DirtyBitmap;
        }

        /// <summary><c>struct kvm_irq_level</c>.</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct KvmIrqLevel
        {
            internal const int Size = 8;
            internal uint Irq;
            internal uint Level;
        }

        /// <summary><c>struct kvm_pit_config</c>.</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal unsafe struct KvmPitConfig
        {
            internal const int Size = 64;
            internal uint Flags;
            private fixed uint _padding[15];
        }

        /// <summary><c>struct kvm_segment</c>.</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct KvmSegment
        {
            internal const int Size = 24;
            internal ulong Base;
            internal uint Limit;
            internal ushort Selector;
            internal byte Type;
            internal byte Present;
            internal byte Dpl;
            /// <summary>D/B bit.</summary>
            internal byte Db;
            /// <summary>S bit: code/data rather than system.</summary>
            internal byte S;
            /// <summary>L bit: 64-bit code.</summary>
            internal byte L;
            /// <summary>G bit: page granularity.</summary>
            internal byte G;
            internal byte Avl;
            internal byte Unusable;
            private readonly byte _padding;
        }

        /// <summary><c>struct kvm_dtable</c>.</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct KvmDtable
        {
            internal ulong Base;
            internal ushort Limit;
            private readonly ushort _padding0;
            private readonly ushort _padding1;
            private readonly ushort _padding2;
        }

        /// <summary><c>struct kvm_sregs</c>.</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal unsafe struct KvmSregs
        {
            internal const int Size = 312;
            internal KvmSegment Cs, Ds, Es, Fs, Gs, Ss, Tr, Ldt;
            internal KvmDtable Gdt, Idt;
            internal ulong Cr0, Cr2, Cr3, Cr4, Cr8;
            internal ulong Efer;
            internal ulong ApicBase;
            /// <summary>Pending external interrupt (one bit per vector) when there is no in-kernel irqchip.</summary>
            internal fixed ulong InterruptBitmap[4];
        }

        /// <summary><c>struct kvm_fpu</c>.</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal unsafe struct KvmFpu
        {
            internal const int Size = 416;
            internal fixed byte Fpr[128];
            internal ushort Fcw;
            internal ushort Fsw;
            /// <summary>Abridged tag word (FXSAVE format).</summary>
            internal byte Ftwx;
            private readonly byte _padding1;
            internal ushort LastOpcode;
            internal ulong LastIp;
            internal ulong LastDp;
            internal fixed byte Xmm[256];
            internal uint Mxcsr;
            private readonly uint _padding2;
        }

        /// <summary><c>struct kvm_msr_entry</c>.</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct KvmMsrEntry
        {
            internal const int Size = 16;
            internal uint Index;
            private readonly uint _reserved;
            internal ulong Data;
        }

        /// <summary><c>struct kvm_cpuid_entry2</c>.</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal unsafe struct KvmCpuidEntry2
        {
            internal const int Size = 40;
            internal uint Function;
            internal uint Index;
            internal uint Flags;
            internal uint Eax, Ebx, Ecx, Edx;
            private fixed uint _padding[3];
        }

        /// <summary>
        /// The fixed part of <c>struct kvm_run</c> (the page shared with the kernel), with the exit
        /// union members the backend reads. Offsets are from the x86-64 header.
        /// </summary>
        [StructLayout(LayoutKind.Explicit, Size = 2352)]
        internal unsafe struct KvmRun
        {
            internal const int Size = 2352;

            /// <summary>In: ask for a KVM_EXIT_IRQ_WINDOW_OPEN exit when the guest can take an interrupt.</summary>
            [FieldOffset(0)] internal byte RequestInterruptWindow;
            /// <summary>In: when non-zero at KVM_RUN entry, KVM_RUN returns EINTR without entering the guest.</summary>
            [FieldOffset(1)] internal byte ImmediateExit;
            [FieldOffset(8)] internal uint ExitReason;
            /// <summary>Out: KVM_INTERRUPT would be delivered now.</summary>
            [FieldOffset(12)] internal byte ReadyForInterruptInjection;
            /// <summary>Out: the guest's RFLAGS.IF.</summary>
            [FieldOffset(13)] internal byte IfFlag;
            [FieldOffset(14)] internal ushort Flags;
            [FieldOffset(16)] internal ulong Cr8;
            [FieldOffset(24)] internal ulong ApicBase;

            // KVM_EXIT_IO
            [FieldOffset(32)] internal byte IoDirection;
            [FieldOffset(33)] internal byte IoSize;
            [FieldOffset(34)] internal ushort IoPort;
            [FieldOffset(36)] internal uint IoCount;
            /// <summary>Offset of the I/O data from the start of the kvm_run mapping.</summary>
            [FieldOffset(40)] internal ulong IoDataOffset;

            // KVM_EXIT_MMIO
            [FieldOffset(32)] internal ulong MmioPhysAddr;
            [FieldOffset(40)] internal fixed byte MmioData[8];
            [FieldOffset(48)] internal uint MmioLen;
            [FieldOffset(52)] internal byte MmioIsWrite;

            // KVM_EXIT_UNKNOWN
            [FieldOffset(32)] internal ulong HardwareExitReason;

            // KVM_EXIT_FAIL_ENTRY
            [FieldOffset(32)] internal ulong HardwareEntryFailureReason;
            [FieldOffset(40)] internal uint FailEntryCpu;

            // KVM_EXIT_EXCEPTION
            [FieldOffset(32)] internal uint ExceptionNumber;
            [FieldOffset(36)] internal uint ExceptionErrorCode;

            // KVM_EXIT_DEBUG (struct kvm_debug_exit_arch)
            /// <summary>The vector that stopped the guest: 1 (#DB: single step, hardware breakpoint) or 3 (#BP: INT3).</summary>
            [FieldOffset(32)] internal uint DebugException;
            [FieldOffset(40)] internal ulong DebugPc;
            [FieldOffset(48)] internal ulong DebugDr6;
            [FieldOffset(56)] internal ulong DebugDr7;

            // KVM_EXIT_HYPERCALL
            [FieldOffset(32)] internal ulong HypercallNr;

            // KVM_EXIT_INTERNAL_ERROR
            [FieldOffset(32)] internal uint InternalSuberror;
            [FieldOffset(36)] internal uint InternalNdata;
            [FieldOffset(40)] internal fixed ulong InternalData[16];

            // KVM_EXIT_SYSTEM_EVENT
            [FieldOffset(32)] internal uint SystemEventType;
            [FieldOffset(36)] internal uint SystemEventNdata;
            [FieldOffset(40)] internal fixed ulong SystemEventData[16];

            /// <summary>In: register sets KVM copies into <see cref="SyncRegs"/> on every return from KVM_RUN (KVM_SYNC_X86_*).</summary>
            [FieldOffset(288)] internal ulong ValidRegs;

            /// <summary>In: register sets in <see cref="SyncRegs"/> KVM loads on the next KVM_RUN; it clears the bits it used.</summary>
            [FieldOffset(296)] internal ulong DirtyRegs;

            /// <summary><c>s.regs.regs</c>: the general registers, shared with the kernel (same layout as <c>struct kvm_regs</c>).</summary>
            [FieldOffset(304)] internal GeneralRegisters SyncRegs;
        }
    }
}
