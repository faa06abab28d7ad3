using System.Collections.Concurrent;

namespace Virt.Testing;

/// <summary>
/// Temporary folders that the tests of one assembly share for the whole run (a booted appliance's snapshot, a sample's
/// kept files), deleted by <see cref="DeleteRunDirectories"/> once every test has run: before the test runner returns,
/// not at process exit, where the deletion's time would count against the runner's one-second wait for the process
/// to end. An assembly that uses it declares <c>[assembly: AssemblyFixture(typeof(Virt.Testing.DeleteRunDirectories))]</c>.
/// </summary>
public static class RunDirectories
{
    private static readonly ConcurrentQueue<string> Created = new();

    /// <summary>Creates a folder under the temporary directory whose name starts with <paramref name="prefix"/>.</summary>
    public static string Create(string prefix)
    {
        string directory = Directory.CreateTempSubdirectory(prefix).FullName;
        Created.Enqueue(directory);
        return directory;
    }

    /// <summary>Deletes every folder <see cref="Create"/> made so far (one already gone, or busy, is left alone).</summary>
    public static void DeleteAll()
    {
        while (Created.TryDequeue(out var directory))
        {
            try
            {
                Directory.Delete(directory, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }
}

/// <summary>The assembly fixture that deletes the <see cref="RunDirectories"/> when every test of the assembly has run.</summary>
public sealed class DeleteRunDirectories : IDisposable
{
    /// <inheritdoc />
    public void Dispose() => RunDirectories.DeleteAll();
}
