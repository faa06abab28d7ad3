using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;
using Microsoft.Win32.SafeHandles;
using Virt.Devices;
using Virt.Devices.Virtio;
using Virt.Memory;
using Virt.Storage;
using Virt.Testing.Virtio;

namespace Virt.Benchmarks.Virtio;

/// <summary>
/// 4 KiB random reads and writes in a fresh process, round by round: the host (<see cref="RandomAccess"/> on the
/// image's handle), the device path with <see cref="VirtioBlockInline.Automatic"/> (inline) and the device path served by
/// the queue's worker, for a raw and a fully allocated qcow2 image. Each round times every case for the same
/// number of requests in turn, so the cases share the machine's load; the table gives each case's median of the
/// rounds and its share of the host's throughput; "paired" is the median of each round's host share (host and inline
/// ran back to back), "cpu" the same from the calling thread's CPU time, which leaves out the time the machine's other
/// processes took (both paths run entirely on the calling thread). A stage line splits the inline path's time: building the chain
/// (driver), the notification (the device's whole service: pop, preadv/pwritev, used entry, interrupt), taking the
/// used entry (driver); and the backend's vectored call alone. The image lives in /dev/shm unless another directory is
/// given (a disk file system: the image is in the page cache after it is filled, and Automatic serves inline only what
/// RWF_NOWAIT allows). With a depth above 1 the driver makes that many requests available, notifies once and takes
/// their used entries (a guest with a deeper queue, as fio's iodepth), and the host does the same requests one after
/// the other with <c>pread</c>/<c>pwrite</c> (fio's psync engine at that depth).
/// </summary>
internal static partial class BlockFresh
{
    private const long ImageSize = 64L << 20;

    public static async Task RunAsync(int requests, int rounds, string directory, int size, int depth = 1)
    {
        if (depth is < 1 or > 64)
        {
            throw new ArgumentOutOfRangeException(nameof(depth), depth, "The depth must be 1 to 64.");
        }

        s_depth = depth;
        requests = Math.Max(depth, requests / depth * depth);
        if (size < 512 || size % 512 != 0 || size > (4 << 20))
        {
            throw new ArgumentOutOfRangeException(nameof(size), size, "The request size must be a multiple of 512 up to 4 MiB.");
        }

        s_size = size;
        Console.WriteLine(size == 4096
            ? $"4 KiB random I/O in {directory}, depth {depth}, {requests} requests per case and round, median of {rounds} rounds (fresh process)"
            : $"{size / 1024} KiB sequential I/O in {directory}, depth {depth}, {requests} requests per case and round, median of {rounds} rounds (fresh process)");
        Console.WriteLine("format  op     host ns  inline ns (host share)  worker ns (host share)");
        foreach (string format in new[] { "raw", "qcow2" })
        {
            await RunFormatAsync(format, requests, rounds, directory);
        }
    }

    /// <summary>Bytes per request: 4 KiB at random offsets, any other size sequentially.</summary>
    private static int s_size = 4096;

    /// <summary>Requests made available per notification.</summary>
    private static int s_depth = 1;

    private static int Small => s_size;

    private static async Task RunFormatAsync(string format, int requests, int rounds, string directory)
    {
        string path = Path.Combine(directory, $"virt-blk-fresh-{Guid.NewGuid():N}.{format}");
        try
        {
            if (format == "raw")
            {
                DiskImage.CreateRaw(path, ImageSize);
            }
            else
            {
                DiskImage.Create(path, ImageSize, DiskFormat.Qcow2);
            }

            var chunk = new byte[1 << 20];
            new Random(1).NextBytes(chunk);
            await using (var fill = DiskImage.Open(path))
            {
                for (long o = 0; o < ImageSize; o += chunk.Length)
                {
                    await fill.WriteAsync(o, chunk);
                }
            }

            await using var backend = DiskImage.Open(path);
            SafeFileHandle host = backend switch
            {
                RawFileBlockBackend raw => raw.Handle,
                Qcow2BlockBackend qcow2 => qcow2.FileHandle!,
                _ => throw new InvalidOperationException("unexpected backend"),
            };
            using var inline = new Rig(backend, VirtioBlockInline.Automatic);
            using var worker = new Rig(backend, VirtioBlockInline.Never);
            if (!inline.Device.ServesInline)
            {
                Console.WriteLine("  (Automatic serves every request on the worker here)");
            }

            var random = new Random(7);
            long[] offsets = Small == 4096
                ? [.. Enumerable.Range(0, 4096).Select(_ => random.NextInt64(ImageSize / Small) * Small)]
                : [.. Enumerable.Range(0, 4096).Select(i => i * (long)Small % (ImageSize - Small + 1) / 512 * 512)];
            byte[] buffer = GC.AllocateArray<byte>(Small, pinned: true);
            foreach (uint type in new uint[] { 0, 1 })
            {
                var hostTimes = new List<double>();
                var inlineTimes = new List<double>();
                var workerTimes = new List<double>();
                var wallRatios = new List<double>();
                var cpuRatios = new List<double>();
                var stages = new double[4];
                void HostRequest(int i)
                {
                    long o = offsets[i & 4095];
                    if (type == 0)
                    {
                        RandomAccess.Read(host, buffer, o);
                    }
                    else
                    {
                        RandomAccess.Write(host, (ReadOnlySpan<byte>)buffer, o);
                    }
                }

                // Warm up for half a second first: tiered compilation installs optimized code some time after the
                // first calls (later on a loaded machine), and the first case measured would otherwise pay for it.
                long warmUntil = Stopwatch.GetTimestamp() + (Stopwatch.Frequency / 2);
                while (Stopwatch.GetTimestamp() < warmUntil)
                {
                    Time(256, HostRequest);
                    Time(256 / s_depth, i => inline.Request(type, offsets, i * s_depth));
                    Time(256 / s_depth, i => worker.Request(type, offsets, i * s_depth));
                }

                for (int round = 0; round < rounds + 1; round++)
                {
                    var (h, hc) = Time(requests, HostRequest);
                    var (d, dc) = Time(requests / s_depth, i => inline.Request(type, offsets, i * s_depth));
                    var (w, _) = Time(requests / s_depth, i => worker.Request(type, offsets, i * s_depth));
                    (d, dc, w) = (d / s_depth, dc / s_depth, w / s_depth);
                    if (round > 0)
                    {
                        // Round 0 warms up (JIT, caches).
                        hostTimes.Add(h);
                        inlineTimes.Add(d);
                        workerTimes.Add(w);
                        wallRatios.Add(h / d);
                        cpuRatios.Add(hc / dc);
                    }
                }

                inline.Stages(type, offsets, requests, stages);
                double hm = Median(hostTimes), im = Median(inlineTimes), wm = Median(workerTimes);
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{format,-7} {(type == 0 ? "read" : "write"),-5} {hm,8:F0}  {im,9:F0} ({hm / im,4:F2})         {wm,9:F0} ({hm / wm,4:F2})   paired {Median(wallRatios):F2}, cpu {Median(cpuRatios):F2}"));
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"        inline stages ns: chain {stages[0]:F0}, notify+serve {stages[1]:F0}, take used {stages[2]:F0}; backend call alone {stages[3]:F0}; slow inline writes so far {inline.Device.InlineWrites.SlowWrites}"));
            }
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>Mean wall-clock and calling-thread CPU nanoseconds per request.</summary>
    private static (double Wall, double Cpu) Time(int requests, Action<int> action)
    {
        long cpu = ThreadCpuNanoseconds();
        long start = Stopwatch.GetTimestamp();
        for (int i = 0; i < requests; i++)
        {
            action(i);
        }

        double wall = Stopwatch.GetElapsedTime(start).TotalNanoseconds / requests;
        return (wall, (double)(ThreadCpuNanoseconds() - cpu) / requests);
    }

    /// <summary>CPU time of the calling thread (user and system), which leaves out the time other processes ran.</summary>
    private static long ThreadCpuNanoseconds()
    {
        const int ClockThreadCpuTime = 3;
        return OperatingSystem.IsLinux() && ClockGetTime(ClockThreadCpuTime, out var ts) == 0 ? (ts.Seconds * 1_000_000_000) + ts.Nanoseconds : 0;
    }

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "clock_gettime")]
    private static partial int ClockGetTime(int clock, out TimeSpec time);

    [System.Runtime.InteropServices.StructLayout(System.Runtime.InteropServices.LayoutKind.Sequential)]
    private struct TimeSpec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    private static double Median(List<double> values)
    {
        values.Sort();
        return values[values.Count / 2];
    }

    private sealed class Rig : IDisposable
    {
        private readonly GuestMemory _ram;
        private readonly MockVirtioDriver _driver;
        private readonly GuestAddress[] _header, _data, _status;

        public Rig(IBlockBackend backend, VirtioBlockInline inline)
        {
            _ram = GuestMemory.CreateRam(8 << 20);
            Device = new VirtioBlockDevice(backend, new VirtioBlockOptions { Inline = inline });
            _driver = new MockVirtioDriver(new VirtioMmioTransport(Device, _ram, NullInterruptLine.Instance), _ram, new GuestAddress(0x1000), new GuestAddress(0x100000));
            _driver.Initialize(queueSize: 256);
            _header = new GuestAddress[s_depth];
            _status = new GuestAddress[s_depth];
            _data = new GuestAddress[s_depth];
            for (int k = 0; k < s_depth; k++)
            {
                _header[k] = _driver.Allocate(16);
                _status[k] = _driver.Allocate(16);
                _data[k] = _driver.Allocate((uint)Small);
            }
        }

        public VirtioBlockDevice Device { get; }

        /// <summary>Makes the requests at <paramref name="offsets"/> from <paramref name="first"/> available (the depth's worth), notifies once, takes their used entries.</summary>
        public void Request(uint type, long[] offsets, int first)
        {
            for (int k = 0; k < s_depth; k++)
            {
                Chain(k, type, offsets[(first + k) & 4095]);
            }

            _driver.Notify(0);
            for (int k = 0; k < s_depth; k++)
            {
                _driver.Queues[0].WaitUsed();
            }
        }

        /// <summary>Times the stages of <paramref name="requests"/> requests (mean ns each) into <paramref name="stages"/>.</summary>
        public void Stages(uint type, long[] offsets, int requests, double[] stages)
        {
            long chain = 0, notify = 0, take = 0;
            for (int i = 0; i < requests; i++)
            {
                long t0 = Stopwatch.GetTimestamp();
                Chain(0, type, offsets[i & 4095]);
                long t1 = Stopwatch.GetTimestamp();
                _driver.Notify(0);
                long t2 = Stopwatch.GetTimestamp();
                _driver.Queues[0].WaitUsed();
                long t3 = Stopwatch.GetTimestamp();
                chain += t1 - t0;
                notify += t2 - t1;
                take += t3 - t2;
            }

            var vectored = (IVectoredBlockBackend)Device.Backend;
            byte[] pinned = GC.AllocateArray<byte>(Small, pinned: true);
            var buffers = new[] { new HostBuffer(System.Runtime.InteropServices.Marshal.UnsafeAddrOfPinnedArrayElement(pinned, 0), Small) };
            long start = Stopwatch.GetTimestamp();
            for (int i = 0; i < requests; i++)
            {
                if (type == 0)
                {
                    vectored.ReadVector(offsets[i & 4095], buffers);
                }
                else
                {
                    vectored.WriteVector(offsets[i & 4095], buffers);
                }
            }

            long alone = Stopwatch.GetTimestamp() - start;
            double perTick = 1e9 / Stopwatch.Frequency / requests;
            stages[0] = chain * perTick;
            stages[1] = notify * perTick;
            stages[2] = take * perTick;
            stages[3] = alone * perTick;
        }

        public void Dispose()
        {
            _driver.WriteRegister(0x70, 0);
            _ram.Dispose();
        }

        private void Chain(int slot, uint type, long offset)
        {
            Span<byte> h = stackalloc byte[16];
            BinaryPrimitives.WriteUInt32LittleEndian(h, type);
            BinaryPrimitives.WriteUInt64LittleEndian(h[8..], (ulong)(offset / 512));
            _ram.Write(_header[slot], h);
            _driver.Queues[0].AddChain((_header[slot], 16, false), (_data[slot], (uint)Small, type == 0), (_status[slot], 1, true));
        }
    }
}
