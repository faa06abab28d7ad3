using System.Buffers.Binary;
using Virt.Snapshots;

namespace Virt;

/// <summary>The receiving side of a migration: pages into a temporary file that guest RAM is then mapped from, then the machine state.</summary>
internal static class MigrationReceiver
{
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
        var frame = new byte[8 + MigrationStream.PageSize];
        var kind = new byte[1];
        var length = new byte[8];
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

                    for (int i = 0; i < count; i++)
                    {
                        await ReadMigrationAsync(source, frame, "page", cancellationToken).ConfigureAwait(false);
                        ulong address = BinaryPrimitives.ReadUInt64LittleEndian(frame);
                        if (address % MigrationStream.PageSize != 0 || address >= memorySize)
                        {
                            throw new SnapshotFormatException("migration", "page address", $"0x{address:x} is not the start of a page of the machine's {memorySize} bytes of RAM.");
                        }

                        await RandomAccess.WriteAsync(memoryFile, frame.AsMemory(8), (long)address, cancellationToken).ConfigureAwait(false);
                    }

                    break;
                }

                case MigrationStream.StateFrame:
                {
                    await ReadMigrationAsync(source, length, "state length", cancellationToken).ConfigureAwait(false);
                    long size = BinaryPrimitives.ReadInt64LittleEndian(length);
                    if (size <= 0 || size > MigrationStream.MaxStateBytes)
                    {
                        throw new SnapshotFormatException("migration", "state length", $"{size} bytes of machine state; at most {MigrationStream.MaxStateBytes} are accepted.");
                    }

                    var state = new byte[size];
                    await ReadMigrationAsync(source, state, "machine state", cancellationToken).ConfigureAwait(false);
                    var stateFile = File.OpenHandle(Path.Combine(directory, $"virt-migration-{Guid.NewGuid():N}.state"), FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, FileOptions.DeleteOnClose);
                    SnapshotReader reader;
                    try
                    {
                        await RandomAccess.WriteAsync(stateFile, state, 0, cancellationToken).ConfigureAwait(false);
                        reader = SnapshotReader.Open(stateFile);
                    }
                    catch
                    {
                        stateFile.Dispose();
                        throw;
                    }

                    using (reader)
                    {
                        return await VirtualMachine.RestoreCoreAsync(MachineSnapshot.Open(reader, memoryFile), configure, cancellationToken).ConfigureAwait(false);
                    }
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
