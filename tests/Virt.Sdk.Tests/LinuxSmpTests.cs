using System.Security.Cryptography;
using System.Text;
using Virt.Testing;
using Xunit;

namespace Virt.Sdk.Tests;

/// <summary>
/// Debian's kernel on the interpreter with several vCPUs: the bootstrap processor starts the others through the
/// local APICs (INIT and start-up IPIs) after finding them in the MADT, the guest counts them, and a job that runs
/// one process per processor finishes with the right output. The VM is saved to a snapshot once the guest has counted
/// its processors, and the job runs on in the VM restored from it.
/// </summary>
/// <remarks>
/// One boot, with four vCPUs on this two-core machine: three application processors to start, more vCPUs than host
/// cores, four disk queues. A second boot with two vCPUs ran the same bring-up, job and checks on a subset of that;
/// two-vCPU machines, INIT and start-up IPIs among them, are covered without a Linux boot by <see cref="SmpFlatGuestTests"/>
/// and <see cref="Snapshots.SmpSnapshotTests"/>.
/// </remarks>
public sealed class LinuxSmpTests
{
    private const int Lines = 150_000;

    [Fact]
    public async Task Debian_kernel_brings_up_every_vcpu_and_runs_a_parallel_job()
    {
        const int vcpus = 4;
        Assert.SkipUnless(File.Exists(LinuxKit.Kernel) && File.Exists(LinuxKit.Initrd), "The guest kit is missing; run scripts/get-linux-guest.sh.");

        // One md5sum per processor over the same file, in parallel; each prints the file's digest. The disk has one
        // queue per vCPU (multiqueue virtio-blk); one writer per processor puts the file at its own offset of it.
        string command = $"echo NPROC=$(nproc); echo MQ=$(ls /sys/block/vda/mq | wc -l); seq 1 {Lines} > /tmp/f; "
            + $"for i in $(seq 1 {vcpus}); do md5sum /tmp/f > /tmp/sum$i & done; "
            + $"for i in $(seq 0 {vcpus - 1}); do taskset -c $i dd if=/tmp/f of=/dev/vda bs=1M seek=$i conv=fsync 2>/dev/null & done; wait; cat /tmp/sum*";
        using var dir = new TempDirectory();
        string disk = Path.Combine(dir.Path, "smp.img");
        Virt.Storage.DiskImage.CreateRaw(disk, 8L << 20);
        string snapshot = Path.Combine(dir.Path, "smp.snap");
        var before = new MarkerStream($"NPROC={vcpus}");
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        timeout.CancelAfter(TimeSpan.FromMinutes(5));
        await using (var booted = VirtualMachine.CreateBuilder()
            .WithInterpreter()
            .WithVcpus(vcpus)
            .WithMemoryMiB(256)
            .WithVirtioBlock(disk)
            .WithLinuxKernel(LinuxKit.Kernel)
            .WithInitrd(LinuxKit.Initrd)
            .WithKernelCommandLine($"quiet {KernelParameters.SkipCryptoSelfTests} virt.cmd={Convert.ToBase64String(Encoding.ASCII.GetBytes(command))}")
            .WithSerialConsole(before)
            .Build())
        {
            Assert.Equal(vcpus, booted.VcpuCount);
            await booted.StartAsync(timeout.Token);
            await before.Seen.Task.WaitAsync(timeout.Token);

            // Every processor is up and the job is starting: save the machine mid-run and go on in a restored one.
            await booted.PauseAsync(timeout.Token);
            await booted.SaveSnapshotAsync(snapshot, timeout.Token);
            await booted.StopAsync(timeout.Token);
        }

        var output = new MemoryStream();
        var vm = await VirtualMachine.RestoreAsync(snapshot, b => b.WithInterpreter().WithVirtioBlock(disk).WithSerialConsole(output), timeout.Token);
        await using var _ = vm;
        Assert.Equal(vcpus, vm.VcpuCount);
        var exit = await vm.RunAsync(timeout.Token);
        string text;
        lock (output)
        {
            text = before.Text + Encoding.UTF8.GetString(output.ToArray());
        }

        Assert.True(exit.Reason == StopReason.PowerOff, exit.Description + "\n" + text);
        Assert.Contains($"NPROC={vcpus}", text, StringComparison.Ordinal);
        Assert.Contains("VIRT-EXIT-STATUS=0", text, StringComparison.Ordinal);

        var content = new StringBuilder();
        for (int i = 1; i <= Lines; i++)
        {
            content.Append(i).Append('\n');
        }

#pragma warning disable CA5351 // the digest md5sum prints in the guest, compared, not a security use
        string digest = Convert.ToHexStringLower(MD5.HashData(Encoding.ASCII.GetBytes(content.ToString())));
#pragma warning restore CA5351
        int sums = text.Split('\n').Count(l => l.TrimEnd('\r') == $"{digest}  /tmp/f");
        Assert.True(sums == vcpus, $"expected {vcpus} lines '{digest}  /tmp/f'\n{text}");
        Assert.Contains($"MQ={vcpus}", text, StringComparison.Ordinal);
        await vm.DisposeAsync();
        byte[] image = await File.ReadAllBytesAsync(disk, TestContext.Current.CancellationToken);
        byte[] expected = Encoding.ASCII.GetBytes(content.ToString());
        for (int i = 0; i < vcpus; i++)
        {
            Assert.True(image.AsSpan(i << 20, expected.Length).SequenceEqual(expected), $"the writer on CPU {i} did not land at {i} MiB\n{text}");
        }
    }
}
