using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;
using Virt.Cpu.Interpreter;
using Virt.Testing;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Benchmarks.Interpreter;

/// <summary>
/// The four CPU workloads on <c>qemu-system-x86_64 -accel tcg</c>, for the peer column of the interpreter's figures.
/// Each workload goes into a Multiboot image: a 32-bit stub enters long mode on page tables inside the image, copies
/// the workload to the address it was assembled for, calls it ten times (its final HLT becomes RET) and leaves through
/// QEMU's isa-debug-exit port. QEMU's time for a workload is the wall time of a run with it less the best run of the same
/// image with an empty workload (machine start-up), best of several; the instruction count is the interpreter's count
/// for the same code. Run with
/// <c>dotnet tests/Virt.Benchmarks/bin/Release/net10.0/Virt.Benchmarks.dll qemu-tcg [runs]</c> (Debian: qemu-system-x86).
/// </summary>
internal static class QemuPeer
{
    private const uint LoadAddress = 0x100000;
    private const uint Pml4 = LoadAddress + 0x1000, Pdpt = LoadAddress + 0x2000, PageDirectory = LoadAddress + 0x3000;
    private const uint Gdt = LoadAddress + 0x4000, Stub = LoadAddress + 0x4100, LongEntry = LoadAddress + 0x4400;
    private const uint Workload = LoadAddress + 0x5000;
    private const ushort ExitPort = 0xf4;

    /// <summary>Calls of the workload per QEMU run, so that its time dwarfs the noise in QEMU's start-up.</summary>
    private const int Repeats = 10;

    public static void Run(int runs, bool thp = false)
    {
        string qemu = FindQemu() ?? throw new InvalidOperationException("qemu-system-x86_64 is not installed (Debian: apt-get install qemu-system-x86).");
        Console.WriteLine(QemuHugePages.Configure(keep: thp));
        using var dir = new TempDirectory("virt-qemu-peer-");
        string empty = Write(dir.Path, "empty", [0xC3]);
        double startup = Enumerable.Range(0, runs).Min(_ => TimeQemu(qemu, empty));
        Console.WriteLine($"qemu start-up and shutdown (empty workload): {startup * 1000:F1} ms, best of {runs}");
        foreach (var (name, code) in new[] { ("loop", GuestWorkloads.TightLoop()), ("checksum", GuestWorkloads.Checksum()), ("sieve", GuestWorkloads.Sieve()), ("calls", GuestWorkloads.Calls()), ("fpu", GuestWorkloads.Fpu()) })
        {
            long instructions = CountInstructions(code) * Repeats;
            byte[] callable = (byte[])code.Clone();
            if (callable[^1] != 0xF4)
            {
                throw new InvalidOperationException($"The {name} workload does not end with HLT.");
            }

            callable[^1] = 0xC3;
            string image = Write(dir.Path, name, callable);
            double best = Enumerable.Range(0, runs).Min(_ => TimeQemu(qemu, image)) - startup;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{name}: {instructions} instructions, qemu tcg {best * 1000:F1} ms = {instructions / best / 1e6:F1} MIPS (best of {runs}, start-up subtracted)"));
        }
    }

    private static string? FindQemu() =>
        new[] { "/usr/bin/qemu-system-x86_64", "/usr/local/bin/qemu-system-x86_64" }.FirstOrDefault(File.Exists);

    /// <summary>Instructions the workload retires, counted by the interpreter (the same code QEMU runs).</summary>
    private static long CountInstructions(byte[] code)
    {
        using var guest = new GuestWorkloads.Guest(new InterpreterHypervisor(new InterpreterOptions()), code);
        var counter = (Virt.Cpu.IInstructionCounting)guest.Vcpu;
        long before = counter.InstructionsRetired;
        guest.RunOnce();
        return counter.InstructionsRetired - before;
    }

    private static double TimeQemu(string qemu, string image)
    {
        var info = new ProcessStartInfo(qemu)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string arg in (string[])["-accel", "tcg", "-m", "64", "-nographic", "-no-reboot", "-monitor", "none", "-serial", "none",
            "-device", $"isa-debug-exit,iobase=0x{ExitPort:x},iosize=0x04", "-kernel", image])
        {
            info.ArgumentList.Add(arg);
        }

        long start = Stopwatch.GetTimestamp();
        using var process = Process.Start(info) ?? throw new InvalidOperationException("qemu did not start.");
        var stderr = process.StandardError.ReadToEndAsync();
        _ = process.StandardOutput.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(5)))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"qemu did not finish {image}.");
        }

        double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;

        // isa-debug-exit: the status is (value << 1) | 1; the stub writes 0.
        if (process.ExitCode != 1)
        {
            throw new InvalidOperationException($"qemu exited with {process.ExitCode} for {image}: {stderr.GetAwaiter().GetResult()}");
        }

        return seconds;
    }

    /// <summary>Writes the Multiboot image for <paramref name="workload"/> (position-independent or assembled for <see cref="GuestWorkloads.CodeAddress"/>).</summary>
    private static string Write(string directory, string name, byte[] workload)
    {
        int size = (int)(Workload - LoadAddress) + workload.Length;
        size = (size + 4095) & ~4095;
        var image = new byte[size];

        // Multiboot header with the address fields (flag 16): the whole file loads at LoadAddress.
        const uint Magic = 0x1BADB002, Flags = 1u << 16;
        var header = image.AsSpan();
        BinaryPrimitives.WriteUInt32LittleEndian(header[0..], Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(header[4..], Flags);
        BinaryPrimitives.WriteUInt32LittleEndian(header[8..], unchecked(0u - Magic - Flags));
        BinaryPrimitives.WriteUInt32LittleEndian(header[12..], LoadAddress);             // header_addr
        BinaryPrimitives.WriteUInt32LittleEndian(header[16..], LoadAddress);             // load_addr
        BinaryPrimitives.WriteUInt32LittleEndian(header[20..], LoadAddress + (uint)size); // load_end_addr
        BinaryPrimitives.WriteUInt32LittleEndian(header[24..], LoadAddress + (uint)size); // bss_end_addr
        BinaryPrimitives.WriteUInt32LittleEndian(header[28..], Stub);                    // entry_addr

        // Identity map of the first GiB with 2 MiB pages.
        BinaryPrimitives.WriteUInt64LittleEndian(image.AsSpan((int)(Pml4 - LoadAddress)), Pdpt | 3UL);
        BinaryPrimitives.WriteUInt64LittleEndian(image.AsSpan((int)(Pdpt - LoadAddress)), PageDirectory | 3UL);
        for (int i = 0; i < 512; i++)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(image.AsSpan((int)(PageDirectory - LoadAddress) + (i * 8)), ((ulong)i << 21) | 0x83UL);
        }

        // GDT: null, 64-bit code (0x08), data (0x10); its pseudo-descriptor follows at +0x20.
        int gdt = (int)(Gdt - LoadAddress);
        BinaryPrimitives.WriteUInt64LittleEndian(image.AsSpan(gdt + 8), 0x00AF9A000000FFFFUL);
        BinaryPrimitives.WriteUInt64LittleEndian(image.AsSpan(gdt + 16), 0x00CF92000000FFFFUL);
        BinaryPrimitives.WriteUInt16LittleEndian(image.AsSpan(gdt + 0x20), 23);
        BinaryPrimitives.WriteUInt32LittleEndian(image.AsSpan(gdt + 0x22), Gdt);

        GuestProgram.Assemble(32, Stub, a =>
        {
            a.cli();
            a.lgdt(__[(int)(Gdt + 0x20)]);
            a.mov(eax, cr4);
            a.or(eax, 0x20 | 0x200);        // PAE, OSFXSR
            a.mov(cr4, eax);
            a.mov(eax, Pml4);
            a.mov(cr3, eax);
            a.mov(ecx, 0xC0000080);         // EFER.LME
            a.rdmsr();
            a.or(eax, 0x100);
            a.wrmsr();
            a.mov(eax, cr0);
            a.or(eax, unchecked((int)0x80000001));
            a.mov(cr0, eax);
            a.push(0x08);
            a.push(LongEntry);
            a.retf();
        }).CopyTo(image, (int)(Stub - LoadAddress));

        GuestProgram.Assemble(64, LongEntry, a =>
        {
            a.mov(eax, 0x10);
            a.mov(ds, eax);
            a.mov(es, eax);
            a.mov(ss, eax);
            a.mov(esp, 0x90000);
            a.mov(esi, Workload);
            a.mov(edi, (int)GuestWorkloads.CodeAddress);
            a.mov(ecx, workload.Length);
            a.rep.movsb();
            a.mov(r15d, Repeats);
            var again = a.CreateLabel();
            a.Label(ref again);
            a.mov(eax, (int)GuestWorkloads.CodeAddress);
            a.call(rax);
            a.dec(r15d);
            a.jnz(again);
            a.xor(eax, eax);
            a.@out((byte)ExitPort, al);
            a.hlt();
        }).CopyTo(image, (int)(LongEntry - LoadAddress));

        workload.CopyTo(image, (int)(Workload - LoadAddress));
        string path = Path.Combine(directory, name + ".mb");
        File.WriteAllBytes(path, image);
        return path;
    }
}
