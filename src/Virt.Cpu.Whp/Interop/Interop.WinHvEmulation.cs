using System.Runtime.InteropServices;
using System.Runtime.Versioning;

namespace Virt.Cpu.Whp;

internal static partial class Interop
{
    /// <summary>WinHvEmulation.dll: the instruction emulator for I/O port and MMIO exits.</summary>
    [SupportedOSPlatform("windows")]
    internal static unsafe partial class WinHvEmulation
    {
        internal const string Library = "WinHvEmulation.dll";

        [LibraryImport(Library)]
        internal static partial int WHvEmulatorCreateEmulator(WHV_EMULATOR_CALLBACKS* callbacks, out WhpEmulatorHandle emulator);

        /// <summary>Raw form for <see cref="WhpEmulatorHandle.ReleaseHandle"/>.</summary>
        [LibraryImport(Library, EntryPoint = "WHvEmulatorDestroyEmulator")]
        internal static partial int DangerousDestroyEmulator(nint emulator);

        [LibraryImport(Library)]
        internal static partial int WHvEmulatorTryIoEmulation(WhpEmulatorHandle emulator, void* context, WHV_VP_EXIT_CONTEXT* vpContext, WHV_X64_IO_PORT_ACCESS_CONTEXT* ioInstructionContext, WHV_EMULATOR_STATUS* emulatorReturnStatus);

        [LibraryImport(Library)]
        internal static partial int WHvEmulatorTryMmioEmulation(WhpEmulatorHandle emulator, void* context, WHV_VP_EXIT_CONTEXT* vpContext, WHV_MEMORY_ACCESS_CONTEXT* mmioInstructionContext, WHV_EMULATOR_STATUS* emulatorReturnStatus);
    }
}
