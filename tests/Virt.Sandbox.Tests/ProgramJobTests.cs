using System.Text;
using Virt.Testing;
using Xunit;

namespace Virt.Sandbox.Tests;

/// <summary>
/// Real jobs: Debian's busybox-static running shell scripts (redirections, <c>while read</c>, temp files, applet round trips)
/// and static C programs (pipes, poll, epoll, a writable file tree, pthreads), each compared byte for byte with the same
/// job run natively in an empty directory holding the same input files, on KVM and on the interpreter.
/// </summary>
public sealed class ProgramJobTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static readonly string Lines = string.Join('\n', Enumerable.Range(0, 200).Select(i => $"row {(i * 37) % 200} fruit{i % 7} {i * i}")) + "\n";

    /// <summary>A shell job: the script for <c>busybox sh -c</c>, its stdin, and input files (name, content) in the working directory.</summary>
    private sealed record ShellJob(string Script, string Stdin = "", bool WithInput = false);

    private static readonly Dictionary<string, ShellJob> ShellJobs = new()
    {
        ["while-read-stdin"] = new("while read x; do echo \"[$x]\"; done", "one\ntwo\nthree\n"),
        ["while-read-fields"] = new("while read a b c; do echo \"$c-$b-$a\"; done", "1 2 3\n4 5 6 7\n"),
        ["read-count"] = new("n=0; while read line; do n=$((n+1)); done; echo lines=$n", Lines),
        ["redirect-and-cat"] = new("echo hello > out.txt; echo world >> out.txt; cat out.txt; cat < out.txt"),
        ["redirect-stderr"] = new("echo to-err 1>&2; echo to-out; ls nonexistent 2>/dev/null; echo status=$?"),
        ["heredoc"] = new("cat <<EOF\nfirst $((6*7))\nsecond\nEOF"),
        ["tmp-files"] = new("echo data > /tmp/x.$$; cat /tmp/x.$$; rm /tmp/x.$$; test -e /tmp/x.$$ || echo removed"),
        ["mkdir-ls"] = new("mkdir -p d/e/f; echo z > d/e/f/z; echo a > d/a; ls -R d"),
        ["rename-symlink"] = new("echo payload > a; mv a b; ln -s b c; cat c; readlink c; ls"),
        ["sort-uniq-wc-files"] = new("sort input.txt > s.txt; uniq s.txt | wc -l; cut -d' ' -f3 input.txt | sort | uniq -c | sort -rn | head -3", WithInput: true),
        ["md5sum-file"] = new("md5sum input.txt; cp input.txt copy.txt; md5sum copy.txt | cut -c1-32", WithInput: true),
        ["sed-grep-file"] = new("sed -n 's/fruit3/FRUIT/p' input.txt > g.txt; grep -c FRUIT g.txt; grep -v row input.txt | wc -l", WithInput: true),
        ["gzip-round-trip"] = new("gzip -c input.txt > i.gz; gzip -dc i.gz | md5sum; md5sum < input.txt", WithInput: true),
        ["tar-round-trip"] = new("mkdir t; cp input.txt t/; echo x > t/x; tar cf t.tar t; rm -r t; tar xf t.tar; md5sum t/input.txt t/x", WithInput: true),
        ["awk-sum"] = new("awk '{ s += $4 } END { print s, NR }' input.txt", WithInput: true),
        ["for-loop-arith"] = new("i=0; for w in a b c d; do i=$((i+1)); echo $i$w; done; echo ${#i}"),
        ["case-and-functions"] = new("f() { case $1 in a*) echo A;; *) echo other;; esac; }; f apple; f pear; f"),
        ["printf-test"] = new("printf '%05d|%s|%x\\n' 42 str 255; [ -d /tmp ] && echo tmp-dir; [ -f /nope ] || echo no-file"),
        ["dev-null-zero"] = new("head -c 100 /dev/zero | wc -c; cat /dev/null; echo end"),
        ["find-files"] = new("mkdir -p q/r; touch q/1 q/r/2; find q | sort"),
        ["pipe-while-read"] = new("echo a | while read x; do echo $x; done"),
        ["pipeline-ls-wc"] = new("touch a b c; ls | wc -l"),
        ["pipeline-three"] = new("seq 1 50 | grep 3 | tr 3 X"),
        ["awk-system"] = new("awk 'BEGIN { system(\"echo hi\"); print \"after\" }'"),
        ["find-exec"] = new("mkdir d; echo 1 > d/x; echo 22 > d/y; find d -type f -exec wc -c {} \\; | sort"),
        ["subshell-and-status"] = new("(echo in-sub; exit 3); echo status=$?; x=$(echo captured); echo $x"),
        ["xargs"] = new("printf 'a\\nb\\nc\\n' | xargs echo got"),
        ["sort-pipe-stdin"] = new("sort | uniq -c | sort -rn | head -2", Lines),
        ["tee-and-diff"] = new("echo line | tee t1 > t2; cmp t1 t2 && echo same; diff t1 t2; echo $?"),
    };

    public static TheoryData<string, BackendKind> ShellCases => BackendCases.OnBothBackends(ShellJobs.Keys);

    [Theory]
    [MemberData(nameof(ShellCases))]
    public async Task Busybox_shell_job_matches_native(string name, BackendKind backend)
    {
        BackendCases.Require(backend);
        string busybox = Busybox.PathOrSkip();
        var job = ShellJobs[name];
        var files = job.WithInput ? new[] { ("input.txt", Lines) } : [];
        string[] args = ["sh", "-c", job.Script];
        var native = RunNative(busybox, args, job.Stdin, files);

        // Natively the job runs in an empty directory; in the sandbox in /w, which holds only the input files.
        var builder = Sandbox.CreateBuilder().WithExecutable(busybox).WithExecutablePath("/bin/busybox")
            .WithArguments("sh", "-c", "mkdir -p /w && cd /w && " + job.Script).WithExecutableAliases("/bin/sh")
            .WithBackend(backend).WithTimeLimit(TimeSpan.FromSeconds(60));
        foreach (var (file, content) in files)
        {
            builder = builder.WithFile("/w/" + file, Encoding.ASCII.GetBytes(content));
        }

        await using var sandbox = builder.Build();
        var result = await sandbox.RunAsync(Encoding.ASCII.GetBytes(job.Stdin), Ct);
        SkipIfInterpreterLacksInstruction(result);
        AssertSameAsNative(native, result);
    }

    public static TheoryData<string, BackendKind> CCases => BackendCases.OnBothBackends(new[] { "pipes", "files", "threads", "forkexec", "rtsignals" });

    [Theory]
    [MemberData(nameof(CCases))]
    public async Task C_program_matches_native(string program, BackendKind backend)
    {
        BackendCases.Require(backend);
        string path = CPrograms.PathOf(program);
        var native = RunNative(path, [], "", []);
        await using var sandbox = Sandbox.CreateBuilder().WithExecutable(CPrograms.Get(program)).WithBackend(backend)
            .WithTimeLimit(TimeSpan.FromSeconds(60)).Build();
        var result = await sandbox.RunAsync(default, Ct);
        SkipIfInterpreterLacksInstruction(result);
        AssertSameAsNative(native, result);
    }

    [Fact]
    public async Task File_system_limit_gives_ENOSPC_and_a_failing_status()
    {
        HostRequirements.RequireKvm();
        string busybox = Busybox.PathOrSkip();
        await using var sandbox = Sandbox.CreateBuilder().WithExecutable(busybox).WithExecutablePath("/bin/busybox")
            .WithArguments("sh", "-c", "head -c 100000 /dev/zero > big; echo status=$?; echo small > ok; cat ok")
            .WithFileSystemLimit(64 * 1024, 16).WithBackend(BackendKind.Kvm).Build();
        var result = await sandbox.RunAsync(default, Ct);
        Assert.True(result.Status == SandboxStatus.Exited, $"{result} {result.Message} {result.StderrText}");
        Assert.Contains("status=1", result.StdoutText, StringComparison.Ordinal);
        Assert.Contains("No space left on device", result.StderrText, StringComparison.Ordinal);
    }

    private static (int ExitCode, string Stdout, string Stderr) RunNative(string file, string[] args, string stdin, (string Name, string Content)[] files)
    {
        string dir = Directory.CreateTempSubdirectory("virt-sandbox-job-").FullName;
        try
        {
            foreach (var (name, content) in files)
            {
                File.WriteAllText(Path.Combine(dir, name), content);
            }

            return CPrograms.RunIn(dir, file, args, Encoding.ASCII.GetBytes(stdin));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static void AssertSameAsNative((int ExitCode, string Stdout, string Stderr) native, SandboxResult result)
    {
        string context = $"{result.Status} {result.Message}\nstdout: {result.StdoutText}\nstderr: {result.StderrText}\nunsupported: {string.Join(",", result.UnsupportedSystemCalls)}\nnative stdout: {native.Stdout}\nnative stderr: {native.Stderr}";
        Assert.True(result.Status == SandboxStatus.Exited, context);
        Assert.True(native.ExitCode == result.ExitCode, $"exit {result.ExitCode}, native {native.ExitCode}\n{context}");
        Assert.True(native.Stdout == result.StdoutText, context);
    }

    private static void SkipIfInterpreterLacksInstruction(SandboxResult result)
    {
        if (result.Status == SandboxStatus.GuestFault && result.Fault!.Vector == 6)
        {
            Assert.Skip($"Skipped: the interpreter raised #UD on an instruction it does not implement yet: {result.Fault}");
        }
    }
}
