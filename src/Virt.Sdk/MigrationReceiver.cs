using System.Buffers.Binary;
using Virt.Snapshots;

namespace Virt;

/// <summary>The receiving side of a migration: pages into a temporary file that guest RAM is then mapped from, then the machine state.</summary>
internal static class MigrationReceiver
{
    private static readonly ReadOnlyMemory<byte> ZeroPage = new byte[MigrationStream.PageSize];

    /// <summary>Reads the stream up to the machine state and restores the machine around it and the received memory.</summary>
    public static async Task<VirtualMachine> ReceiveAsync(Stream source, Func<VirtualMachineBuilder, VirtualMachineBuilder>? configure, CancellationToken cancellationToken)
    {
        var header = new byte[MigrationStream.HeaderSize];
        await ReadMigrationAsync(source, header, "header", cancellationToken).ConfigureAwait(false);
        if (!header.AsSpan(0, 8).SequenceEqual(MigrationStream.Magic))
        {
            throw new SnapshotFormatException("migration", "magic", "the stream does not start with VIRTMIGR; it is not a Virt.Sdk migration.");
        }

        int version = BinaryPrimitives.ReadInt32LittleEndian(header.AsSpan(8));
        if (version != MigrationStream.Version)
        {
            throw new SnapshotFormatException("migration", "version", $"version {version}; this build reads version {MigrationStream.Version}. Use the same Virt.Sdk version on both sides.");
        }

        ulong memorySize = BinaryPrimitives.ReadUInt64LittleEndian(header.AsSpan(12));
        if (memorySize == 0 || memorySize % MigrationStream.PageSize != 0 || memorySize > VirtualMachineBuilder.MaxMemorySize)
        {
            throw new SnapshotFormatException("migration", "memory size", $"{memorySize} bytes is not a whole number of 4 KiB pages between 4 KiB and {VirtualMachineBuilder.MaxMemorySize} bytes.");
        }

        string directory = Path.GetTempPath();
        using var memoryFile = File.OpenHandle(Path.Combine(directory, $"virt-migration-{Guid.NewGuid():N}.ram"), FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, FileOptions.DeleteOnClose);
        RandomAccess.SetLength(memoryFile, (long)memorySize);
        var table = new byte[MigrationStream.PagesPerFrame * 8];
        var data = new byte[MigrationStream.PagesPerFrame * MigrationStream.PageSize];
        var kind = new byte[1];
        var length = new byte[8];
        SnapshotReader? machineReader = null;
        VirtualMachine? vm = null;
        try
        {
            while (true)
            {
                await ReadMigrationAsync(source, kind, "frame kind", cancellationToken).ConfigureAwait(false);
                switch (kind[0])
                {
                    case MigrationStream.PagesFrame:
                    {
                        await ReadMigrationAsync(source, length.AsMemory(0, 4), "page count", cancellationToken).ConfigureAwait(false);
                        int count = BinaryPrimitives.ReadInt32LittleEndian(length);
                        if (count is <= 0 or > MigrationStream.PagesPerFrame)
                        {
                            throw new SnapshotFormatException("migration", "page count", $"a frame of {count} pages; a frame holds 1 to {MigrationStream.PagesPerFrame}.");
                        }

                        await ReadMigrationAsync(source, table.AsMemory(0, count * 8), "page table", cancellationToken).ConfigureAwait(false);
                        int withData = CheckPageTable(table.AsSpan(0, count * 8), memorySize);
                        await ReadMigrationAsync(source, data.AsMemory(0, withData * MigrationStream.PageSize), "page", cancellationToken).ConfigureAwait(false);
                        ApplyPages(table.AsSpan(0, count * 8), data, memoryFile, vm?.Memory);
                        break;
                    }

                    case MigrationStream.MachineFrame:
                    {
                        if (machineReader is not null)
                        {
                            throw new SnapshotFormatException("migration", "machine", "a second machine frame; a migration describes its machine once.");
                        }

                        machineReader = await ReadSnapshotFrameAsync(source, length, directory, "machine", cancellationToken).ConfigureAwait(false);
                        if (machineReader.Sections.Count != 1)
                        {
                            throw new SnapshotFormatException("migration", "machine", $"the machine frame holds {machineReader.Sections.Count} sections; it holds the machine's description alone.");
                        }

                        // The machine is built now, while the sender's later rounds arrive (they go into its memory from
                        // here on); only the state is left to load when it comes.
                        vm = await VirtualMachine.BuildForRestoreAsync(MachineSnapshot.Open(machineReader, memoryFile), configure, cancellationToken).ConfigureAwait(false);
                        vm.RehearseRestore();
                        break;
                    }

                    case MigrationStream.StateFrame:
                    {
                        if (vm is null)
                        {
                            throw new SnapshotFormatException("migration", "state", "the machine state came before the machine's description.");
                        }

                        using var reader = await ReadSnapshotFrameAsync(source, length, directory, "machine state", cancellationToken).ConfigureAwait(false);
                        if (!MachineSnapshot.DescriptionBytes(reader).AsSpan().SequenceEqual(MachineSnapshot.DescriptionBytes(machineReader!)))
                        {
                            throw new SnapshotFormatException("migration", "machine", "the machine state describes another machine than the one the migration announced before its last pages.");
                        }

                        var restored = vm;
                        vm = null; // disposed by FinishRestoreAsync if the state does not load
                        await restored.FinishRestoreAsync(reader, cancellationToken).ConfigureAwait(false);
                        return restored;
                    }

                    case MigrationStream.AbortFrame:
                    {
                        await ReadMigrationAsync(source, length.AsMemory(0, 4), "abort reason length", cancellationToken).ConfigureAwait(false);
                        int size = Math.Clamp(BinaryPrimitives.ReadInt32LittleEndian(length), 0, 4096);
                        var text = new byte[size];
                        await ReadMigrationAsync(source, text, "abort reason", cancellationToken).ConfigureAwait(false);
                        throw new InvalidOperationException($"The sender abandoned the migration: {System.Text.Encoding.UTF8.GetString(text)}");
                    }

                    default:
                        throw new SnapshotFormatException("migration", "frame kind", $"unknown frame kind {kind[0]}.");
                }
            }
        }
        finally
        {
            if (vm is not null)
            {
                await vm.DisposeAsync().ConfigureAwait(false);
            }

            machineReader?.Dispose();
        }
    }

    /// <summary>Checks every entry of a page table and returns how many pages of data follow it (those not marked zero).</summary>
    private static int CheckPageTable(ReadOnlySpan<byte> table, ulong memorySize)
    {
        int withData = 0;
        for (int at = 0; at < table.Length; at += 8)
        {
            ulong entry = BinaryPrimitives.ReadUInt64LittleEndian(table[at..]);
            ulong address = entry & ~MigrationStream.ZeroPage;
            if (address % MigrationStream.PageSize != 0 || address >= memorySize)
            {
                throw new SnapshotFormatException("migration", "page address", $"0x{entry:x} is not the start of a page of the machine's {memorySize} bytes of RAM (with bit 0 for a zero page).");
            }

            if ((entry & MigrationStream.ZeroPage) == 0)
            {
                withData++;
            }
        }

        return withData;
    }

    /// <summary>
    /// Puts a checked frame's pages in place: into the memory file until the machine is built, then into its guest memory
    /// (mapped copy-on-write from the file, so the file is not written behind the mapping). Pages whose data lies next
    /// to each other in the frame and in the file go in one write.
    /// </summary>
    private static void ApplyPages(ReadOnlySpan<byte> table, byte[] data, Microsoft.Win32.SafeHandles.SafeFileHandle memoryFile, Virt.Memory.IGuestMemory? memory)
    {
        int next = 0; // the next page of data
        int runStart = -1;
        ulong runAddress = 0;
        int runPages = 0;
        for (int at = 0; at < table.Length; at += 8)
        {
            ulong entry = BinaryPrimitives.ReadUInt64LittleEndian(table[at..]);
            ulong address = entry & ~MigrationStream.ZeroPage;
            bool isZero = (entry & MigrationStream.ZeroPage) != 0;
            if (memory is not null)
            {
                var target = RamLayout.ToGuestAddress(address);
                if (isZero)
                {
                    memory.Write(target, ZeroPage.Span);
                }
                else
                {
                    memory.Write(target, data.AsSpan(next++ * MigrationStream.PageSize, MigrationStream.PageSize));
                }

                continue;
            }

            if (isZero)
            {
                Flush();
                RandomAccess.Write(memoryFile, ZeroPage.Span, (long)address);
                continue;
            }

            if (runPages > 0 && address == runAddress + ((ulong)runPages * MigrationStream.PageSize))
            {
                runPages++;
            }
            else
            {
                Flush();
                runStart = next;
                runAddress = address;
                runPages = 1;
            }

            next++;
        }

        Flush();

        void Flush()
        {
            if (runPages > 0)
            {
                RandomAccess.Write(memoryFile, data.AsSpan(runStart * MigrationStream.PageSize, runPages * MigrationStream.PageSize), (long)runAddress);
                runPages = 0;
            }
        }
    }

    /// <summary>Reads a length and a snapshot (without memory) from the stream and opens it from an unnamed temporary file.</summary>
    private static async Task<SnapshotReader> ReadSnapshotFrameAsync(Stream source, byte[] length, string directory, string what, CancellationToken cancellationToken)
    {
        await ReadMigrationAsync(source, length, what + " length", cancellationToken).ConfigureAwait(false);
        long size = BinaryPrimitives.ReadInt64LittleEndian(length);
        if (size <= 0 || size > MigrationStream.MaxStateBytes)
        {
            throw new SnapshotFormatException("migration", what + " length", $"{size} bytes of {what}; at most {MigrationStream.MaxStateBytes} are accepted.");
        }

        var state = new byte[size];
        await ReadMigrationAsync(source, state, what, cancellationToken).ConfigureAwait(false);
        var file = File.OpenHandle(Path.Combine(directory, $"virt-migration-{Guid.NewGuid():N}.state"), FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, FileOptions.DeleteOnClose);
        try
        {
            RandomAccess.Write(file, state, 0);
            return SnapshotReader.Open(file);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    private static async Task ReadMigrationAsync(Stream source, Memory<byte> buffer, string what, CancellationToken cancellationToken)
    {
        try
        {
            await source.ReadExactlyAsync(buffer, cancellationToken).ConfigureAwait(false);
        }
        catch (EndOfStreamException e)
        {
            throw new SnapshotFormatException($"Migration stream, {what}: the stream ended before the machine state arrived; the sender stopped or the connection broke.", e);
        }
    }
}
