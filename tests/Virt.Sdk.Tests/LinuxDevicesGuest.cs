using System.Diagnostics;
using System.Text;
using Virt.Testing;
using Xunit;

namespace Virt.Sdk.Tests;

/// <summary>
/// One Linux guest on the interpreter, booted once for <see cref="LinuxSharedFolderTests"/>,
/// <see cref="LinuxUserNetworkTests"/>, <see cref="LinuxGuestAgentTests"/>, <see cref="LinuxAcpiDeviceTests"/> and
/// <see cref="LinuxBalloonTests"/> and <see cref="LinuxQcow2Tests"/> (one boot instead of six): two shared
/// folders (<see cref="BootedSharedFolderGuest"/>), a NIC on user-mode networking (<see cref="BootedUserNetworkGuest"/>),
/// a vsock device with the guest kit's agent, a user device described by ACPI (<see cref="LinuxAcpiDeviceTests"/>), and
/// a memory balloon, the VM in a resource pool of its own (<see cref="LinuxBalloonTests"/>), and two qcow2 disks made by
/// qemu-img (<see cref="BootedQcow2Disks"/>, for <see cref="LinuxQcow2Tests"/>). Its command runs the shared-folder checks, then the network checks,
/// then waits; the tests start once the agent has announced itself and the last marker has been printed.
/// </summary>
public sealed class BootedDevicesGuest : IAsyncLifetime
{
    /// <summary>The VM's name in <see cref="Pool"/>.</summary>
    public const string Name = "devices";

    public VirtualMachine? Vm { get; private set; }

    /// <summary>The resource pool the VM is in: one CPU, 512 MiB (the VM's 256 MiB are charged to it, less what its balloon holds).</summary>
    public ResourcePool Pool { get; } = new(new ResourcePoolOptions { Cpus = 1, MemoryBytes = 512UL << 20 });

    /// <summary>Everything the guest printed (shared by the three classes; each looks for its own lines).</summary>
    public MarkerStream Console { get; } = new(BootedUserNetworkGuest.ServingMarker);

    public BootedSharedFolderGuest? SharedFolders { get; private set; }

    public BootedUserNetworkGuest? UserNetwork { get; private set; }

    /// <summary>The qcow2 images attached as vda and vdb, or null without qemu-img.</summary>
    public BootedQcow2Disks? Qcow2Disks { get; private set; }

    public string? SkipReason { get; private set; }

    /// <summary>Why the guest is not ready (it stopped, or timed out), or null.</summary>
    public string? Failure { get; private set; }

    public TimeSpan BootToAgent { get; private set; }

    public async ValueTask InitializeAsync()
    {
        if (!File.Exists(LinuxKit.Kernel) || !File.Exists(LinuxKit.Initrd))
        {
            SkipReason = "The guest kit is missing; run scripts/get-linux-guest.sh.";
            return;
        }

        // Shared folders need a Linux host; elsewhere the guest runs without them and their tests skip.
        SharedFolders = OperatingSystem.IsLinux() ? new BootedSharedFolderGuest() : null;
        UserNetwork = new BootedUserNetworkGuest();
        UserNetwork.Start();
        string command = (SharedFolders is null ? "" : BootedSharedFolderGuest.Command + "; ") + $"{UserNetwork.Command}; sleep 600";
        var builder = VirtualMachine.CreateBuilder()
            .WithInterpreter()
            .WithMemoryMiB(256)
            .WithLinuxKernel(LinuxKit.Kernel)
            .WithInitrd(LinuxKit.Initrd)
            .WithKernelCommandLine($"quiet {KernelParameters.SkipCryptoSelfTests} virt.net=dhcp virt.cmd={Convert.ToBase64String(Encoding.ASCII.GetBytes(command))}")
            .WithSerialConsole(Console)
            .WithVsock(guestCid: 42)
            .WithGuestAgent();
        builder = SignatureDevice.Add(builder);
        Qcow2Disks = BootedQcow2Disks.CreateIfQemuImg();
        builder = Qcow2Disks?.Configure(builder) ?? builder;
        Vm = UserNetwork.Configure(SharedFolders?.Configure(builder) ?? builder).WithBalloon().WithName(Name).WithResourcePool(Pool).Build();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(8));
        var clock = Stopwatch.StartNew();
        await Vm.StartAsync(timeout.Token);
        var exited = Vm.WaitForExitAsync(timeout.Token);
        var agent = Vm.WaitForAgentAsync(timeout.Token);
        try
        {
            await Task.WhenAny(agent, exited);
            BootToAgent = clock.Elapsed;
            await Task.WhenAny(Console.Seen.Task.WaitAsync(timeout.Token), exited);
        }
        catch (OperationCanceledException)
        {
        }

        if (exited.IsCompletedSuccessfully)
        {
            Failure = $"The guest stopped: {exited.Result.Description}\n{Console.Text}";
        }
        else if (!agent.IsCompletedSuccessfully)
        {
            Failure = $"The guest's agent did not announce itself in 8 minutes.\n{Console.Text}";
        }
    }

    /// <summary>Skips without the guest kit; fails when the guest stopped or its agent never came.</summary>
    public void Require()
    {
        Assert.SkipWhen(SkipReason is not null, SkipReason ?? "");
        Assert.True(Failure is null, Failure);
    }

    public async ValueTask DisposeAsync()
    {
        if (Vm is not null)
        {
            await Vm.DisposeAsync();
        }

        if (UserNetwork is not null)
        {
            await UserNetwork.DisposeAsync();
        }

        SharedFolders?.Dispose();
        Qcow2Disks?.Dispose();
        Pool.Dispose();
    }
}

/// <summary>The classes that share <see cref="BootedDevicesGuest"/>: they run one after another, after its one boot.</summary>
[CollectionDefinition(nameof(BootedDevicesGuest))]
public sealed class BootedDevicesGuestCollection : ICollectionFixture<BootedDevicesGuest>;
