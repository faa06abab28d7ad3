using System.Runtime.InteropServices;
using Xunit;

namespace Virt.Storage.Tests;

/// <summary>The io_uring binding on its own: one batch of reads and writes of a file, and what it refuses to describe.</summary>
public sealed class IoUringTests
{
    private const int Block = 4096;
    private const int RWF_NOWAIT = 8;

    [Fact]
    public unsafe void A_batch_writes_and_reads_a_file_with_one_submission_and_each_entry_has_its_result()
    {
        using var ring = IoUring.TryCreate(8, out string status);
        if (ring is null)
        {
            // Hosts without io_uring (seccomp, io_uring_disabled, not x86-64 Linux) say why.
            Assert.False(string.IsNullOrEmpty(status));
            return;
        }

        Assert.Equal("io_uring (8 entries)", status);
        Assert.Equal(8, ring.Capacity);
        using var dir = new TempDir();
        string path = dir.File("file.bin");
        using var file = File.OpenHandle(path, FileMode.Create, FileAccess.ReadWrite);
        RandomAccess.SetLength(file, 16 * Block);
        int fd = (int)file.DangerousGetHandle();
        byte* memory = (byte*)NativeMemory.AlignedAlloc(16 * Block, Block);
        try
        {
            var source = new Span<byte>(memory, 8 * Block);
            new Random(3).NextBytes(source);

            // Eight writes (two of them in two pieces, READV/WRITEV), then eight reads back into other memory.
            for (int i = 0; i < 8; i++)
            {
                var at = (nint)(memory + (i * Block));
                HostBuffer[] pieces = i % 4 == 0 ? [new(at, 1024), new(at + 1024, Block - 1024)] : [new(at, Block)];
                Assert.True(ring.TryAdd(write: true, fd, (15 - i) * (long)Block, pieces, 0));
            }

            Assert.False(ring.TryAdd(write: true, fd, 0, [new((nint)memory, Block)], 0)); // full
            Span<int> results = stackalloc int[8];
            Assert.True(ring.SubmitAndWait(results));
            Assert.Equal(Enumerable.Repeat(Block, 8), results.ToArray());

            var back = new Span<byte>(memory + (8 * Block), 8 * Block);
            for (int i = 0; i < 8; i++)
            {
                Assert.True(ring.TryAdd(write: false, fd, (15 - i) * (long)Block, [new((nint)(memory + ((8 + i) * Block)), Block)], RWF_NOWAIT));
            }

            Assert.True(ring.SubmitAndWait(results));
            Assert.Equal(Enumerable.Repeat(Block, 8), results.ToArray());
            Assert.True(source.SequenceEqual(back));

            // A read past the end of the file is short (0), not an error; nine buffers are more than an entry describes;
            // entries dropped with Discard never reach the kernel.
            Assert.True(ring.TryAdd(write: false, fd, 16 * Block, [new((nint)memory, Block)], 0));
            Assert.True(ring.TryAdd(write: false, fd, 0, [new((nint)memory, Block)], 0));
            Assert.True(ring.SubmitAndWait(results));
            Assert.Equal([0, Block], results[..2].ToArray());
            Assert.False(ring.TryAdd(write: false, fd, 0, Enumerable.Repeat(new HostBuffer((nint)memory, 512), IoUring.MaxVectorsPerEntry + 1).ToArray(), 0));
            Assert.True(ring.TryAdd(write: true, fd, 0, [new((nint)memory, Block)], 0));
            ring.Discard();
            Assert.Equal(0, ring.Count);
            Assert.True(ring.SubmitAndWait(results));
            Assert.False(ring.IsBroken);
        }
        finally
        {
            NativeMemory.AlignedFree(memory);
        }
    }
}
