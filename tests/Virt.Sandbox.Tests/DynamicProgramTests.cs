using System.Text;
using Virt.Testing;
using Xunit;

namespace Virt.Sandbox.Tests;

/// <summary>
/// Debian's own dynamically linked programs (coreutils, perl, sqlite3, python3) run with the host's root file system
/// granted read-only: the sandbox loads their interpreter (PT_INTERP), which maps libc and the other libraries through
/// openat and file-backed mmap. Each job's stdout is compared byte for byte with the same job run natively with an empty
/// environment, on KVM and on the interpreter.
/// </summary>
public sealed class DynamicProgramTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>A job: the program's path on this host (and in the sandbox) and its arguments.</summary>
    private sealed record Job(string Program, string[] Arguments, string Stdin = "");

    private static readonly Dictionary<string, Job> Jobs = new()
    {
        ["true"] = new("/usr/bin/true", []),
        ["false"] = new("/usr/bin/false", []),
        ["echo"] = new("/usr/bin/echo", ["hello", "from", "coreutils"]),
        ["ls"] = new("/usr/bin/ls", ["-1", "/usr/share/common-licenses"]),
        ["cat-stdin"] = new("/usr/bin/cat", [], "line one\nline two\n"),
        ["sort-stdin"] = new("/usr/bin/sort", ["-r"], "b\nc\na\n"),
        ["perl"] = new("/usr/bin/perl", ["-e", "print 6*7"]),
        ["perl-module"] = new("/usr/bin/perl", ["-MList::Util=sum", "-e", "print sum(1..100), qq{\\n}"]),
        ["sqlite3"] = new("/usr/bin/sqlite3", [":memory:", "select 6*7"]),
        ["sqlite3-table"] = new("/usr/bin/sqlite3", [":memory:", "create table t(x); insert into t values (1),(2),(3); select sum(x), group_concat(x) from t;"]),
        ["python3"] = new("/usr/bin/python3", ["-c", "print(sum(range(10)))"]),
        ["python3-exe"] = new("/usr/bin/python3", ["-c", "import os, sys; print(os.readlink('/proc/self/exe'), sys.executable, sys.prefix, os.getcwd() == os.path.realpath('.'))"]),
        ["python3-json"] = new("/usr/bin/python3", ["-c", "import json, sys; print(json.dumps({'a': [1, 2.5, None]}, sort_keys=True)); sys.exit(3)"]),
        ["seq"] = new("/usr/bin/seq", ["1", "3", "20"]),
        ["sha256sum-stdin"] = new("/usr/bin/sha256sum", [], "some input\nmore\n"),
        ["base64-stdin"] = new("/usr/bin/base64", [], "binary\u0001\u0002 data to encode\n"),
        ["wc-stdin"] = new("/usr/bin/wc", [], "one two\nthree\n"),
        ["tr-stdin"] = new("/usr/bin/tr", ["a-z", "A-Z"], "shout this\n"),
        ["od-stdin"] = new("/usr/bin/od", ["-A", "x", "-t", "x1z"], "od dump\n"),
        ["factor"] = new("/usr/bin/factor", ["1234567", "600851475143"]),
        ["expr"] = new("/usr/bin/expr", ["6", "*", "7"]),
        ["gzip-stdin"] = new("/usr/bin/gzip", ["-c", "-n", "-9"], "compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me compress me "),
        ["bzip2-stdin"] = new("/usr/bin/bzip2", ["-c"], "compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too compress me too "),
        ["xz-stdin"] = new("/usr/bin/xz", ["-c", "-T1"], "and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well and xz as well "),
        ["python3-hashlib"] = new("/usr/bin/python3", ["-c", "import hashlib; print(hashlib.sha256(b'abc').hexdigest(), hashlib.md5(b'').hexdigest())"]),
        ["python3-re-stdin"] = new("/usr/bin/python3", ["-c", "import re, sys; print(re.findall(r'\\d+', sys.stdin.read()))"], "a1 b22 c333\n"),
        ["python3-sort-stdin"] = new("/usr/bin/python3", ["-c", "import sys; sys.stdout.write(''.join(sorted(sys.stdin, key=len)))"], "ccc\na\nbb\n"),
        ["python3-collections"] = new("/usr/bin/python3", ["-c", "from collections import Counter, OrderedDict; import itertools; print(Counter('mississippi').most_common(2), list(itertools.permutations('ab')))"]),
        ["python3-math-decimal"] = new("/usr/bin/python3", ["-c", "import math, fractions, decimal; print(math.factorial(30), fractions.Fraction(3, 9), decimal.Decimal(1) / decimal.Decimal(7))"]),
        ["perl-stdin-filter"] = new("/usr/bin/perl", ["-ne", "print uc if /a/"], "apple\nberry\nbanana\n"),
        ["perl-sprintf-sort"] = new("/usr/bin/perl", ["-e", "printf(qq{%05.1f|%s\\n}, 3.14159, join(q{,}, sort { $b <=> $a } (5, 12, 3)))"]),
        ["sqlite3-cte"] = new("/usr/bin/sqlite3", [":memory:", "with recursive c(x) as (select 1 union all select x*2 from c where x < 1000) select group_concat(x, ' ') from c;"]),
        ["sqlite3-json"] = new("/usr/bin/sqlite3", [":memory:", "select json_object('a', 1, 'b', json_array(1, 2)), json_extract('{\"k\": [5, 6]}', '$.k[1]');"]),
    };

    public static TheoryData<string, BackendKind> Cases => BackendCases.OnBothBackends(Jobs.Keys);

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task Dynamic_program_matches_native(string name, BackendKind backend)
    {
        var job = Jobs[name];
        NativeJobs.RequireProgram(job.Program);
        BackendCases.Require(backend);

        var native = NativeJobs.Run(job.Program, job.Arguments, job.Stdin);
        await using var sandbox = Sandbox.CreateBuilder()
            .WithRootFileSystem("/")
            .WithExecutable(job.Program).WithExecutablePath(job.Program)
            .WithArguments(job.Arguments)
            .WithMemoryLimit(256 << 20)
            .WithBackend(backend).WithTimeLimit(TimeSpan.FromSeconds(120))
            .Build();
        var result = await sandbox.RunAsync(Encoding.ASCII.GetBytes(job.Stdin), Ct);
        string context = $"{result.Status} {result.Message}\nstdout: {result.StdoutText}\nstderr: {result.StderrText}\nrefused: {string.Join(",", result.UnsupportedSystemCalls)}\nnative: {native.ExitCode} {Encoding.UTF8.GetString(native.Stdout)} {native.Stderr}";
        if (backend == BackendKind.Interpreter && result.Status == SandboxStatus.GuestFault && result.Fault!.Vector == 6)
        {
            Assert.Skip($"Skipped: the interpreter raised #UD on an instruction it does not implement yet: {result.Fault}");
        }

        Assert.True(result.Status == SandboxStatus.Exited, context);
        Assert.True(native.ExitCode == result.ExitCode, $"exit {result.ExitCode}, native {native.ExitCode}\n{context}");
        Assert.True(native.Stdout.AsSpan().SequenceEqual(result.Stdout.Span), context);
    }

    [Fact]
    public async Task Refused_calls_of_a_dynamic_program_are_counted()
    {
        HostRequirements.RequireKvm();
        NativeJobs.RequireProgram("/usr/bin/true");
        await using var sandbox = Sandbox.CreateBuilder().WithRootFileSystem("/").WithExecutable("/usr/bin/true")
            .WithExecutablePath("/usr/bin/true").WithBackend(BackendKind.Kvm).Build();
        var result = await sandbox.RunAsync(default, Ct);
        Assert.True(result.Status == SandboxStatus.Exited && result.ExitCode == 0, $"{result} {result.Message}");

        // glibc registers rseq at start-up; the sandbox answers ENOSYS and glibc carries on without it.
        Assert.True(result.UnsupportedSystemCalls.TryGetValue("rseq", out int count) && count >= 1, string.Join(",", result.UnsupportedSystemCalls));
    }

    [Fact]
    public async Task Dynamic_program_resets_to_its_snapshot_between_calls()
    {
        HostRequirements.RequireKvm();
        NativeJobs.RequireProgram("/usr/bin/sort");
        await using var sandbox = Sandbox.CreateBuilder().WithRootFileSystem("/").WithExecutable("/usr/bin/sort")
            .WithExecutablePath("/usr/bin/sort").WithBackend(BackendKind.Kvm).Build();
        var first = await sandbox.RunAsync("b\na\n"u8.ToArray(), Ct);
        var second = await sandbox.RunAsync("z\ny\nx\n"u8.ToArray(), Ct);
        Assert.True(first.Status == SandboxStatus.Exited && second.Status == SandboxStatus.Exited, $"{first.Message} {second.Message} {second.StderrText}");
        Assert.Equal("a\nb\n", first.StdoutText);
        Assert.Equal("x\ny\nz\n", second.StdoutText);
        Assert.True(second.Usage.RestoredPages > 0, "the second call did not start from the snapshot");
    }

    [Fact]
    public void Dynamic_program_without_a_root_file_system_is_refused_with_advice()
    {
        NativeJobs.RequireProgram("/usr/bin/true");
        var e = Assert.Throws<ElfImageException>(() => Sandbox.CreateBuilder().WithExecutable("/usr/bin/true").Build());
        Assert.Equal("PT_INTERP", e.Field);
        Assert.Contains("WithRootFileSystem", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Host_directory_grant_does_not_reach_outside_through_links_or_dot_dot()
    {
        HostRequirements.RequireKvm();
        string busybox = Busybox.PathOrSkip();
        string dir = Directory.CreateTempSubdirectory("virt-sandbox-grant-").FullName;
        string secret = Path.Combine(Path.GetDirectoryName(dir)!, Path.GetFileName(dir) + "-secret.txt");
        try
        {
            File.WriteAllText(Path.Combine(dir, "inside.txt"), "inside\n");
            File.WriteAllText(secret, "host secret\n");
            File.CreateSymbolicLink(Path.Combine(dir, "absolute-link"), secret);
            File.CreateSymbolicLink(Path.Combine(dir, "relative-link"), "../" + Path.GetFileName(secret));
            File.CreateSymbolicLink(Path.Combine(dir, "inner-link"), "inside.txt");
            string script = "cat /data/inside.txt; cat /data/inner-link; cat /data/absolute-link; cat /data/relative-link; " +
                $"cat /data/../{Path.GetFileName(secret)}; cat /data/../../../..{secret}; echo x > /data/new && cat /data/new; " +
                "rm /data/inside.txt; echo end";
            await using var sandbox = Sandbox.CreateBuilder().WithExecutable(busybox).WithExecutablePath("/bin/busybox")
                .WithHostDirectory(dir, "/data").WithArguments("sh", "-c", script).WithBackend(BackendKind.Kvm).Build();
            var result = await sandbox.RunAsync(default, Ct);
            Assert.True(result.Status == SandboxStatus.Exited, $"{result} {result.Message} {result.StderrText}");
            Assert.Equal("inside\ninside\nx\nend\n", result.StdoutText);
            Assert.DoesNotContain("secret", result.StdoutText + result.StderrText.Replace(Path.GetFileName(secret), "", StringComparison.Ordinal), StringComparison.Ordinal);
            Assert.True(File.Exists(Path.Combine(dir, "inside.txt")), "the program removed a host file");
            Assert.False(File.Exists(Path.Combine(dir, "new")), "the program wrote to the host directory");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
            File.Delete(secret);
        }
    }

    [Fact]
    public async Task Host_directory_grant_leaves_out_fifos_so_an_open_cannot_block_the_host()
    {
        HostRequirements.RequireKvm();
        string busybox = Busybox.PathOrSkip();
        string dir = Directory.CreateTempSubdirectory("virt-sandbox-fifo-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "file.txt"), "plain\n");
            var (code, log) = CPrograms.Run("mkfifo", [Path.Combine(dir, "pipe")]);
            Assert.True(code == 0, "mkfifo failed: " + log);
            await using var sandbox = Sandbox.CreateBuilder().WithExecutable(busybox).WithExecutablePath("/bin/busybox")
                .WithHostDirectory(dir, "/data").WithArguments("sh", "-c", "ls /data; cat /data/pipe; echo status=$?")
                .WithBackend(BackendKind.Kvm).WithTimeLimit(TimeSpan.FromSeconds(30)).Build();
            var result = await sandbox.RunAsync(default, Ct);
            Assert.True(result.Status == SandboxStatus.Exited, $"{result} {result.Message} {result.StderrText}");
            Assert.Equal("file.txt\nstatus=1\n", result.StdoutText);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
