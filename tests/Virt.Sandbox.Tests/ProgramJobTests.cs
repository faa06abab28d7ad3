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
        ["gzip-levels"] = new("for l in 1 6 9; do gzip -$l -c input.txt | gzip -dc | md5sum; done", WithInput: true),
        ["bzip2-round-trip"] = new("bzip2 -c input.txt > i.bz2; bzip2 -dc i.bz2 | md5sum; bzcat i.bz2 | wc -l", WithInput: true),
        ["bzip2-levels"] = new("for l in 1 9; do bzip2 -$l -c input.txt | md5sum; done; bzip2 -c input.txt | bunzip2 | tail -1", WithInput: true),
        ["gzip-stdin-names"] = new("gzip -c < input.txt > a.gz; zcat a.gz | head -1; gunzip a.gz; md5sum a; gzip -t a.gz 2>/dev/null; echo tested=$?", WithInput: true),
        ["sha-sums"] = new("sha1sum input.txt; sha256sum input.txt; sha512sum input.txt | cut -c1-40; sha3sum input.txt", WithInput: true),
        ["crc32-cksum"] = new("crc32 input.txt; md5sum < input.txt", WithInput: true),
        ["base64-round-trip"] = new("base64 input.txt > b; base64 -d b | md5sum; head -c 60 b; echo", WithInput: true),
        ["uuencode-round-trip"] = new("uuencode input.txt name > u; uudecode -o out u; cmp out input.txt && echo same", WithInput: true),
        ["od-hexdump-xxd"] = new("printf 'ab\\001\\377xyz\\n' > b; od -c b; hexdump -C b; xxd b; xxd -p b"),
        ["bc-arith"] = new("echo 'scale=20; 4*a(1)' | bc -l; echo '2^100' | bc; echo '17 % 5' | bc"),
        ["dc-rpn"] = new("echo '2 3 + 4 * p' | dc; echo '10 3 / p' | dc"),
        ["expr-ops"] = new("expr 6 \\* 7; expr length hello; expr substr abcdef 2 3; expr 10 / 3; expr 5 \\> 3"),
        ["factor-seq"] = new("factor 360 1001 65537; seq 5 -1 1; seq -s, 1 2 9; seq -w 8 11"),
        ["rev-tac-nl"] = new("printf 'one\\ntwo\\nthree\\n' | rev; printf 'one\\ntwo\\nthree\\n' | tac; nl input.txt | tail -2", WithInput: true),
        ["fold-expand"] = new("printf 'a\\tb\\tc\\n' | expand -t 4; echo abcdefghijklmnop | fold -w 5; printf '    x\\n' | unexpand -a | od -c"),
        ["paste-cut"] = new("seq 1 6 | paste - - -; seq 1 4 | paste -s -d+; cut -c1-7 input.txt | sort -u | head -3", WithInput: true),
        ["uniq-counts"] = new("cut -d' ' -f3 input.txt | sort | uniq -c; cut -d' ' -f3 input.txt | sort | uniq -d | wc -l", WithInput: true),
        ["sort-keys"] = new("sort -t' ' -k4,4n input.txt | head -3; sort -t' ' -k2,2nr input.txt | head -2; sort -u -k3,3 input.txt | wc -l", WithInput: true),
        ["sed-scripts"] = new("sed -e '1,3d' -e 's/row/R/' -e '/fruit2/!d' input.txt | head -4; sed -n '$=' input.txt; sed '2q' input.txt", WithInput: true),
        ["sed-hold"] = new("printf 'a\\nb\\nc\\n' | sed -n '1!G;h;$p'; printf 'x y\\n' | sed -E 's/(x) (y)/\\2 \\1/'"),
        ["awk-fields"] = new("awk -F' ' '$3 == \"fruit4\" { n++; s += $2 } END { printf \"%d %d\\n\", n, s }' input.txt", WithInput: true),
        ["awk-arrays"] = new("awk '{ c[$3]++ } END { for (k in c) print k, c[k] | \"sort\"; close(\"sort\") }' input.txt", WithInput: true),
        ["awk-printf-math"] = new("awk 'BEGIN { printf \"%.3f %d %s %5.1e\\n\", 3.14159, 7/2, toupper(\"abc\"), 12345.678; print length(\"hello\"), substr(\"hello\", 2, 3), index(\"hello\", \"l\") }'"),
        ["awk-split-gsub"] = new("echo 'a:b:c:d' | awk '{ n = split($0, p, \":\"); gsub(/[bc]/, \"X\"); print n, p[4], $0 }'"),
        ["grep-options"] = new("grep -c fruit1 input.txt; grep -n 'row 1[0-9] ' input.txt | head -3; grep -E 'fruit(5|6)' input.txt | wc -l; grep -vi ROW input.txt | wc -l; grep -o 'fruit[0-3]' input.txt | sort | uniq -c", WithInput: true),
        ["grep-files"] = new("echo abc > a; echo abd > b; grep -l abc a b; grep -h ab a b; grep -r abd . | sort"),
        ["tr-classes"] = new("echo 'Hello, World 123' | tr -d '[:digit:]'; echo 'aaabbb' | tr -s ab; echo hello | tr a-y b-z; echo 'a b c' | tr ' ' '\\n'"),
        ["head-tail"] = new("head -n 3 input.txt; tail -n 2 input.txt; head -c 20 input.txt; echo; tail -c 15 input.txt; tail -n +198 input.txt", WithInput: true),
        ["wc-variants"] = new("wc -l input.txt; wc -w < input.txt; wc -c input.txt; printf 'a b\\nc' | wc", WithInput: true),
        ["dd-blocks"] = new("dd if=input.txt bs=100 count=3 2>/dev/null | md5sum; dd if=input.txt bs=1 skip=10 count=20 2>/dev/null; echo; dd if=/dev/zero bs=512 count=4 2>/dev/null | wc -c", WithInput: true),
        ["cpio-round-trip"] = new("mkdir d; cp input.txt d/; echo z > d/z; find d | sort | cpio -o -H newc > a.cpio 2>/dev/null; rm -r d; cpio -id < a.cpio 2>/dev/null; md5sum d/input.txt d/z", WithInput: true),
        ["diff-patch"] = new("seq 1 10 > a; seq 1 10 | sed 's/5/five/' > b; diff a b; diff -u a b > p; tail -n +3 p; patch a p > /dev/null; cmp a b && echo patched"),
        ["cmp-differ"] = new("printf 'abc' > a; printf 'abd' > b; cmp a b; echo status=$?"),
        ["strings-file"] = new("printf 'ab\\000\\001hello world\\000xyz\\002longer string here\\n' > b; strings b; strings -n 3 b"),
        ["printf-formats"] = new("printf '%s|%5s|%-5s|%d|%03d|%x|%o|%c|%%\\n' a b c 42 7 255 8 Z; printf '%.2f %e\\n' 3.14159 1234.5"),
        ["test-expressions"] = new("[ 3 -lt 5 ] && echo lt; [ abc = abc ] && echo eq; [ -z '' ] && echo empty; [ -n x ] && echo nonempty; test 4 -ge 5 || echo notge; [ ! -e nope ] && echo none"),
        ["shell-parameters"] = new("set -- a b c; echo $# $1 $3; shift; echo $@; x=hello; echo ${x#h} ${x%o} ${#x} ${y:-default} ${x:1:3}"),
        ["shell-loops"] = new("i=0; while [ $i -lt 5 ]; do i=$((i+1)); [ $i -eq 3 ] && continue; echo $i; done; for f in x y; do for g in 1 2; do echo $f$g; done; done"),
        ["shell-functions-return"] = new("f() { return $(($1 % 3)); }; for n in 3 4 5; do f $n; echo $n:$?; done; g() { local v=inner; echo $v; }; v=outer; g; echo $v"),
        ["shell-redirect-fds"] = new("exec 3> f3; echo three >&3; exec 3>&-; cat f3; { echo out; echo err >&2; } 2>&1 | sort; (echo a; echo b) > g; wc -l < g"),
        ["shell-heredoc-pipeline"] = new("cat <<'EOF' | sort -r | tr a-z A-Z\nbeta\nalpha\ngamma\nEOF"),
        ["shell-command-substitution"] = new("n=$(wc -l < input.txt); echo lines=$n; echo \"$(echo nested $(echo deep))\"; echo `expr 2 + 3`", WithInput: true),
        ["shell-case-glob"] = new("touch a.txt b.txt c.log; for f in *.txt; do echo $f; done; ls *.log; case x.tar.gz in *.gz) echo gz;; esac"),
        ["shell-exit-codes"] = new("false; echo $?; true; echo $?; (exit 7); echo $?; ! true; echo $?; sh -c 'exit 9'; echo $?"),
        ["shell-and-or"] = new("true && echo and1; false && echo and2; false || echo or1; true || echo or2; [ 1 = 1 ] && [ 2 = 2 ] && echo both"),
        ["shell-pipeline-status"] = new("echo abc | grep -q b && echo found; echo abc | grep -q z || echo notfound; seq 100 | head -1"),
        ["xargs-variants"] = new("seq 1 7 | xargs -n 3 echo; echo a b c | xargs -n1 | sort -r; printf 'x\\000y\\000' | xargs -0 echo"),
        ["find-predicates"] = new("mkdir -p t/u; touch t/a.c t/b.h t/u/c.c; echo data > t/u/d; find t -name '*.c' | sort; find t -type d | sort; find t -size +0 -type f"),
        ["tar-gzip-pipeline"] = new("mkdir -p p/q x; seq 1 100 > p/q/n; cp input.txt p/; tar cf - p | gzip -c | gzip -dc | tar xf - -C x; md5sum x/p/q/n x/p/input.txt", WithInput: true),
        ["ln-readlink-realpath"] = new("echo x > target; ln -s target l1; ln -s l1 l2; readlink l2; readlink -f l2 | sed 's,.*/,,'; ln target hard; cat hard; basename /a/b/c.txt .txt; dirname /a/b/c.txt"),
        ["truncate-sizes"] = new("echo hello > f; truncate -s 100 f; wc -c < f; truncate -s 2 f; cat f; echo; dd if=/dev/zero of=z bs=1k count=3 2>/dev/null; wc -c < z"),
        ["dos2unix-round-trip"] = new("printf 'a\\nb\\n' > f; unix2dos f; od -c f | head -1; dos2unix f; od -c f | head -1"),
        ["cal-fixed"] = new("cal 2 2024; cal 9 1752 | head -4"),
        ["date-fixed"] = new("date -u -d @0 '+%Y-%m-%d %H:%M:%S'; date -u -d @1700000000 +%A; TZ=UTC date -d '2024-02-29 12:00' +%j"),
        ["getopt-parse"] = new("getopt -o ab:c -- -a -b val x -c y"),
        ["env-and-export"] = new("env -i FOO=bar sh -c 'echo $FOO'; export Z=1; sh -c 'echo z=$Z'; unset Z; sh -c 'echo z=$Z'"),
        ["sha-pipeline-large"] = new("seq 1 20000 | sha256sum; seq 1 20000 | gzip -c | gzip -dc | wc -l"),
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
