using System.Runtime.InteropServices;
using System.Runtime.Versioning;

namespace Virt.Cpu.Whp;

internal static partial class Interop
{
    /// <summary>WinHvPlatform.dll: partitions, memory, virtual processors. Every function returns an HRESULT.</summary>
    [SupportedOSPlatform("windows")]
    internal static unsafe partial class WinHvPlatform
    {
        internal const string Library = "WinHvPlatform.dll";

        [LibraryImport(Library)]
        internal static partial int WHvGetCapability(WhvCapabilityCode capabilityCode, void* capabilityBuffer, uint capabilityBufferSizeInBytes, uint* writtenSizeInBytes);

        [LibraryImport(Library)]
        internal static partial int WHvCreatePartition(out WhpPartitionHandle partition);

        [LibraryImport(Library)]
        internal static partial int WHvSetupPartition(WhpPartitionHandle partition);

        /// <summary>Raw form for <see cref="WhpPartitionHandle.ReleaseHandle"/>.</summary>
        [LibraryImport(Library, EntryPoint = "WHvDeletePartition")]
        internal static partial int DangerousDeletePartition(nint partition);

        [LibraryImport(Library)]
        internal static partial int WHvSetPartitionProperty(WhpPartitionHandle partition, WhvPartitionPropertyCode propertyCode, void* propertyBuffer, uint propertyBufferSizeInBytes);

        [LibraryImport(Library)]
        internal static partial int WHvGetPartitionProperty(WhpPartitionHandle partition, WhvPartitionPropertyCode propertyCode, void* propertyBuffer, uint propertyBufferSizeInBytes, uint* writtenSizeInBytes);

        [LibraryImport(Library)]
        internal static partial int WHvMapGpaRange(WhpPartitionHandle partition, nint sourceAddress, ulong guestAddress, ulong sizeInBytes, WhvMapGpaRangeFlags flags);

        [LibraryImport(Library)]
        internal static partial int WHvUnmapGpaRange(WhpPartitionHandle partition, ulong guestAddress, ulong sizeInBytes);

        [LibraryImport(Library)]
        internal static partial int WHvTranslateGva(WhpPartitionHandle partition, uint vpIndex, ulong gva, WhvTranslateGvaFlags translateFlags, WHV_TRANSLATE_GVA_RESULT* translationResult, ulong* gpa);

        [LibraryImport(Library)]
        internal static partial int WHvCreateVirtualProcessor(WhpPartitionHandle partition, uint vpIndex, uint flags);

        [LibraryImport(Library)]
        internal static partial int WHvDeleteVirtualProcessor(WhpPartitionHandle partition, uint vpIndex);

        [LibraryImport(Library)]
        internal static partial int WHvRunVirtualProcessor(WhpPartitionHandle partition, uint vpIndex, void* exitContext, uint exitContextSizeInBytes);

        [LibraryImport(Library)]
        internal static partial int WHvCancelRunVirtualProcessor(WhpPartitionHandle partition, uint vpIndex, uint flags);

        [LibraryImport(Library)]
        internal static partial int WHvGetVirtualProcessorRegisters(WhpPartitionHandle partition, uint vpIndex, WhvRegisterName* registerNames, uint registerCount, WHV_REGISTER_VALUE* registerValues);

        [LibraryImport(Library)]
        internal static partial int WHvSetVirtualProcessorRegisters(WhpPartitionHandle partition, uint vpIndex, WhvRegisterName* registerNames, uint registerCount, WHV_REGISTER_VALUE* registerValues);

        [LibraryImport(Library)]
        internal static partial int WHvQueryGpaRangeDirtyBitmap(WhpPartitionHandle partition, ulong guestAddress, ulong rangeSizeInBytes, ulong* bitmap, uint bitmapSizeInBytes);

        [LibraryImport(Library)]
        internal static partial int WHvRequestInterrupt(WhpPartitionHandle partition, WHV_INTERRUPT_CONTROL* interrupt, uint interruptControlSize);
    }
}
