using System.Text;
using Virt.Testing;
using Xunit;

namespace Virt.Orleans.Tests;

/// <summary>The file-system snapshot store and the console buffer, without a cluster.</summary>
public sealed class StoreTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Every_save_is_a_new_file_and_a_failed_save_leaves_nothing()
    {
        using var dir = new TempDirectory();
        var store = new FileSystemSnapshotStore(dir.Path);
        string first = await store.SaveAsync("vm/1", (s, ct) => s.WriteAsync("one"u8.ToArray(), ct).AsTask(), Ct);
        string second = await store.SaveAsync("vm/1", (s, ct) => s.WriteAsync("two"u8.ToArray(), ct).AsTask(), Ct);
        Assert.NotEqual(first, second);
        Assert.DoesNotContain('/', first);
        Assert.Equal("one", File.ReadAllText(await store.GetLocalPathAsync(first, Ct)));
        Assert.Equal("two", File.ReadAllText(await store.GetLocalPathAsync(second, Ct)));

        await Assert.ThrowsAsync<IOException>(() => store.SaveAsync("vm", (s, ct) => throw new IOException("disk full"), Ct));
        Assert.Equal(2, Directory.GetFiles(dir.Path).Length);

        await store.DeleteAsync(first, Ct);
        await Assert.ThrowsAsync<FileNotFoundException>(() => store.GetLocalPathAsync(first, Ct));
        await store.DeleteAsync(first, Ct); // gone already: ignored
    }

    [Theory]
    [InlineData("../etc/passwd")]
    [InlineData("/etc/passwd.snap")]
    [InlineData("..snap")]
    [InlineData("state.json")]
    public async Task A_reference_that_is_not_a_snapshot_file_of_the_store_is_refused(string reference)
    {
        using var dir = new TempDirectory();
        var store = new FileSystemSnapshotStore(dir.Path);
        await Assert.ThrowsAsync<ArgumentException>(() => store.GetLocalPathAsync(reference, Ct));
        await Assert.ThrowsAsync<ArgumentException>(() => store.DeleteAsync(reference, Ct));
    }

    [Fact]
    public void The_console_buffer_keeps_the_last_bytes_and_counts_what_it_dropped()
    {
        using var buffer = new ConsoleBuffer(8, "ab"u8, 10);
        Assert.Equal(10, buffer.End);
        buffer.Write("cdefghij"u8);
        Assert.Equal(18, buffer.End);
        var all = buffer.Read(0, 100);
        Assert.Equal(10, all.Offset);
        Assert.Equal(10, all.Dropped);
        Assert.Equal("cdefghij", all.Text);
        Assert.Equal(15, buffer.Find("efg"u8, 0));
        Assert.Equal(-1, buffer.Find("ab"u8, 0));
        Assert.Equal("hi", buffer.Read(15, 2).Text);
        var (tail, end) = buffer.Snapshot();
        Assert.Equal("cdefghij", Encoding.ASCII.GetString(tail));
        Assert.Equal(18, end);
        buffer.Write(new byte[20]);
        Assert.Equal(38, buffer.End);
        Assert.Equal(8, buffer.Read(0, 100).Data.Length);
    }
}
