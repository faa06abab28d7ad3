using System.Text;
using Virt.Testing;
using Xunit;

namespace Virt.Sandbox.Tests;

/// <summary>
/// Debian's Go programs (built with Go 1.19): <c>shfmt</c> (static), <c>age</c>, <c>age-keygen</c>, <c>fzf</c> and
/// <c>direnv</c> (dynamically linked through cgo, so they run with the host's root granted read-only). Go's runtime
/// starts threads at once, reserves hundreds of MiB of address space with <c>mmap(PROT_NONE)</c> (the sandbox's reserved
/// region), installs a handler for every signal on an alternate stack, and polls through epoll. Each job's stdout and
/// exit status are compared byte for byte with the same job run natively, on KVM and on the interpreter.
/// </summary>
public sealed class GoProgramTests
{
    private const string Script = "#!/bin/sh\nif [ -n \"$1\" ];then\necho  \"arg: $1\"\nfi\nfor i in 1 2 3; do   echo $i;done\nf() {\n  case $1 in a) echo A;;\n  *) echo other;;esac\n}\n";
    private const string Words = "apple\nbanana\ncherry\napricot\ngrape\npineapple\nblackberry\navocado\npapaya\n";

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>A job: the program, its arguments and stdin; <see cref="WithKey"/> grants the test identity at /key.txt.</summary>
    private sealed record Job(string Program, string[] Arguments, string Stdin = "", bool WithKey = false);

    private static readonly Dictionary<string, Job> Jobs = new()
    {
        ["shfmt-stdin"] = new("/usr/bin/shfmt", [], Script),
        ["shfmt-indent-2"] = new("/usr/bin/shfmt", ["-i", "2", "-ci"], Script),
        ["shfmt-minify"] = new("/usr/bin/shfmt", ["-mn"], Script),
        ["shfmt-syntax-error"] = new("/usr/bin/shfmt", [], "if then fi (\n"),
        ["shfmt-version"] = new("/usr/bin/shfmt", ["--version"]),
        ["age-version"] = new("/usr/bin/age", ["--version"]),
        ["age-keygen-public"] = new("/usr/bin/age-keygen", ["-y", "/key.txt"], WithKey: true),
        ["age-bad-recipient"] = new("/usr/bin/age", ["-e", "-r", "age1notakey"], "data\n"),
        ["fzf-filter"] = new("/usr/bin/fzf", ["--filter", "ap"], Words),
        ["fzf-filter-exact"] = new("/usr/bin/fzf", ["--exact", "--filter", "rr"], Words),
        ["fzf-filter-anchored"] = new("/usr/bin/fzf", ["-f", "^a"], Words),
        ["fzf-version"] = new("/usr/bin/fzf", ["--version"]),
        ["direnv-version"] = new("/usr/bin/direnv", ["version"]),
        ["direnv-stdlib"] = new("/usr/bin/direnv", ["stdlib"]),
    };

    public static TheoryData<string, BackendKind> Cases => BackendCases.OnBothBackends(Jobs.Keys);

    public static TheoryData<string, BackendKind> Backends => BackendCases.OnBothBackends(["age"]);

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task Go_program_matches_native(string name, BackendKind backend)
    {
        var job = Jobs[name];
        NativeJobs.RequireProgram(job.Program);
        BackendCases.Require(backend);
        using var key = job.WithKey ? TestKey.Create() : null;
        var native = NativeJobs.Run(job.Program, job.WithKey ? [.. job.Arguments.Select(a => a == "/key.txt" ? key!.Path : a)] : job.Arguments, job.Stdin);

        var result = await RunInSandbox(job.Program, job.Arguments, Encoding.UTF8.GetBytes(job.Stdin), backend, key);
        string context = Describe(result) + $"\nnative: {native.ExitCode} {Encoding.UTF8.GetString(native.Stdout)} {native.Stderr}";
        Assert.True(result.Status == SandboxStatus.Exited, context);
        Assert.True(native.ExitCode == result.ExitCode, $"exit {result.ExitCode}, native {native.ExitCode}\n{context}");
        Assert.True(native.Stdout.AsSpan().SequenceEqual(result.Stdout.Span), context);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Age_encrypts_and_decrypts_what_native_age_decrypts_and_encrypts(string program, BackendKind backend)
    {
        NativeJobs.RequireProgram("/usr/bin/" + program);
        NativeJobs.RequireProgram("/usr/bin/age-keygen");
        BackendCases.Require(backend);
        using var key = TestKey.Create();
        byte[] plain = Encoding.UTF8.GetBytes(string.Concat(Enumerable.Range(0, 300).Select(i => $"secret line {i}\n")));

        // The sandbox encrypts to the test key's recipient; native age decrypts.
        var encrypted = await RunInSandbox("/usr/bin/age", ["-e", "-a", "-r", key.Recipient], plain, backend, key: null);
        Assert.True(encrypted.Status == SandboxStatus.Exited && encrypted.ExitCode == 0, Describe(encrypted));
        Assert.StartsWith("-----BEGIN AGE ENCRYPTED FILE-----", encrypted.StdoutText, StringComparison.Ordinal);
        var decryptedNatively = NativeJobs.Run("/usr/bin/age", ["-d", "-i", key.Path], encrypted.StdoutText);
        Assert.True(decryptedNatively.ExitCode == 0, decryptedNatively.Stderr);
        Assert.Equal(plain, decryptedNatively.Stdout);

        // Native age encrypts; the sandbox decrypts with the identity granted at /key.txt.
        var encryptedNatively = NativeJobs.Run("/usr/bin/age", ["-e", "-a", "-r", key.Recipient], Encoding.UTF8.GetString(plain));
        Assert.True(encryptedNatively.ExitCode == 0, encryptedNatively.Stderr);
        var decrypted = await RunInSandbox("/usr/bin/age", ["-d", "-i", "/key.txt"], encryptedNatively.Stdout, backend, key);
        Assert.True(decrypted.Status == SandboxStatus.Exited && decrypted.ExitCode == 0, Describe(decrypted));
        Assert.Equal(plain, decrypted.Stdout.ToArray());
    }

    [Fact]
    public async Task Go_reservations_take_address_space_not_memory()
    {
        NativeJobs.RequireProgram("/usr/bin/shfmt");
        HostRequirements.RequireKvm();

        // Go 1.19 reserves about 600 MiB (its page-allocator index and a 64 MiB heap arena) before main: with a 64 MiB
        // limit only what it commits counts.
        await using var sandbox = Sandbox.CreateBuilder().WithExecutable("/usr/bin/shfmt").WithExecutablePath("/usr/bin/shfmt")
            .WithMemoryLimit(64 << 20).WithBackend(BackendKind.Kvm).WithTimeLimit(TimeSpan.FromSeconds(120)).Build();
        var result = await sandbox.RunAsync(Encoding.UTF8.GetBytes(Script), Ct);
        Assert.True(result.Status == SandboxStatus.Exited && result.ExitCode == 0, Describe(result));
        Assert.Contains("for i in 1 2 3; do", result.StdoutText, StringComparison.Ordinal);
        Assert.Empty(result.UnsupportedSystemCalls);
    }

    [Fact]
    public async Task Go_program_serves_warm_calls_from_its_snapshot()
    {
        NativeJobs.RequireProgram("/usr/bin/shfmt");
        HostRequirements.RequireKvm();
        await using var sandbox = Sandbox.CreateBuilder().WithExecutable("/usr/bin/shfmt").WithExecutablePath("/usr/bin/shfmt")
            .WithMemoryLimit(128 << 20).WithBackend(BackendKind.Kvm).WithTimeLimit(TimeSpan.FromSeconds(120)).Build();
        for (int i = 0; i < 3; i++)
        {
            var result = await sandbox.RunAsync(Encoding.UTF8.GetBytes($"echo   {i};if true;then  x=$(( {i}+1 ));fi\n"), Ct);
            Assert.True(result.Status == SandboxStatus.Exited && result.ExitCode == 0, Describe(result));
            Assert.Equal($"echo {i}\nif true; then x=$(({i} + 1)); fi\n", result.StdoutText);
        }
    }

    private static async Task<SandboxResult> RunInSandbox(string program, string[] arguments, ReadOnlyMemory<byte> stdin, BackendKind backend, TestKey? key)
    {
        var builder = Sandbox.CreateBuilder().WithExecutable(program).WithExecutablePath(program).WithArguments(arguments)
            .WithMemoryLimit(256 << 20).WithBackend(backend).WithTimeLimit(TimeSpan.FromSeconds(120));
        if (File.ReadAllBytes(program).AsSpan(0, 0x2000).IndexOf("/lib64/ld-linux"u8) >= 0)
        {
            builder = builder.WithRootFileSystem("/");
        }

        if (key is not null)
        {
            builder = builder.WithFile("/key.txt", File.ReadAllBytes(key.Path));
        }

        await using var sandbox = builder.Build();
        return await sandbox.RunAsync(stdin, Ct);
    }

    private static string Describe(SandboxResult result) =>
        $"{result.Status} {result.Message}\nstdout: {result.StdoutText}\nstderr: {result.StderrText}\nrefused: {string.Join(",", result.UnsupportedSystemCalls)}";

    /// <summary>An age identity made natively with age-keygen in a temporary directory.</summary>
    private sealed class TestKey : IDisposable
    {
        private readonly string _directory;

        private TestKey(string directory, string recipient)
        {
            _directory = directory;
            Recipient = recipient;
        }

        public string Path => System.IO.Path.Combine(_directory, "key.txt");

        public string Recipient { get; }

        public static TestKey Create()
        {
            NativeJobs.RequireProgram("/usr/bin/age-keygen");
            string dir = Directory.CreateTempSubdirectory("virt-sandbox-age-").FullName;
            var made = NativeJobs.Run("/usr/bin/age-keygen", ["-o", System.IO.Path.Combine(dir, "key.txt")], "");
            Assert.True(made.ExitCode == 0, made.Stderr);
            var recipient = NativeJobs.Run("/usr/bin/age-keygen", ["-y", System.IO.Path.Combine(dir, "key.txt")], "");
            return new TestKey(dir, Encoding.ASCII.GetString(recipient.Stdout).Trim());
        }

        public void Dispose() => Directory.Delete(_directory, recursive: true);
    }
}
