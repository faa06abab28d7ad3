using Virt.Testing;
using Xunit;

namespace Virt.Cli.Tests;

public sealed class SandboxTests
{
    private const string Program = """
        #include <stdio.h>
        #include <stdlib.h>
        #include <string.h>
        int main(int argc, char **argv) {
            if (argc > 1 && strcmp(argv[1], "spin") == 0) for (;;) { }
            if (argc > 1 && strcmp(argv[1], "cat") == 0) { int c; while ((c = getchar()) != EOF) putchar(c); return 0; }
            for (int i = 1; i < argc; i++) printf("arg%d=%s\n", i, argv[i]);
            fprintf(stderr, "to stderr\n");
            return argc > 1 ? atoi(argv[argc - 1]) : 0;
        }
        """;

    private static readonly Lazy<string> s_program = new(() =>
    {
        string dir = Path.Combine(Path.GetTempPath(), "virt-cli-tests");
        Directory.CreateDirectory(dir);
        string source = Path.Combine(dir, $"prog-{Environment.ProcessId}.c");
        string binary = Path.ChangeExtension(source, null);
        File.WriteAllText(source, Program);
        HostTools.Run("gcc", $"-static -O1 -o {binary} {source}");
        return binary;
    });

    [Fact]
    public void Runs_a_program_with_its_arguments_output_and_exit_status()
    {
        var result = VirtTool.Run(["sandbox", s_program.Value, "--", "-x", "hello world", "7"]);

        Assert.True(result.ExitCode == 7, result.All);
        Assert.Equal("arg1=-x\narg2=hello world\narg3=7\n", result.Stdout);
        Assert.Contains("to stderr", result.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void Standard_input_reaches_the_program()
    {
        var result = VirtTool.Run(["sandbox", s_program.Value, "cat"], stdin: "piped text\n");
        Assert.True(result.ExitCode == 0, result.All);
        Assert.Equal("piped text\n", result.Stdout);
    }

    [Fact]
    public void A_limit_ends_the_run_with_status_124_and_says_which()
    {
        var result = VirtTool.Run(["sandbox", "--time", "0.5", s_program.Value, "spin"]);
        Assert.True(result.ExitCode == SandboxCommand.LimitStatus, result.All);
        Assert.Contains("TimeLimitExceeded", result.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void A_missing_program_or_bad_limit_is_status_125_with_the_reason()
    {
        var missing = VirtTool.Run(["sandbox", "/nonexistent/program"]);
        Assert.Equal(SandboxCommand.FailureStatus, missing.ExitCode);
        Assert.Contains("/nonexistent/program", missing.Stderr, StringComparison.Ordinal);

        var tooSmall = VirtTool.Run(["sandbox", "--memory", "0", s_program.Value]);
        Assert.Equal(SandboxCommand.FailureStatus, tooSmall.ExitCode);
        Assert.Contains("virt sandbox:", tooSmall.Stderr, StringComparison.Ordinal);
    }
}
