using System.CommandLine;
using Virt.Cli;

// virt: the Virt.Sdk command-line tool. Each command lives in its own file; see docs/cli.md.
var root = new RootCommand("virt: run x86-64 virtual machines and sandboxes with Virt.Sdk, and check what this host can run.")
{
    DoctorCommand.Create(),
    RunCommand.Create(),
    SandboxCommand.Create(),
    DiskCommand.Create(),
    KitCommand.Create(),
    NetCommand.Create(),
};
return await root.Parse(args).InvokeAsync().ConfigureAwait(false);
