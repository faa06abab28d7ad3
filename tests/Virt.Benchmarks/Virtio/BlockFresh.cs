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
/// the other with <c>pread</c>/<c>pwrite</c> (fio's psync engine at that depth). With VIRT_BLK_FRESH_PROFILE=host,
/// inline or worker only that path runs (requests times rounds after the warm-up), for a profiler.
/// </summary>
internal static partial class BlockFresh
{
    private const long ImageSize = 64L << 20;

    public static async Task RunAsync(int requests, int rounds, string directory, int size, int depth = 1, string cases = "all")
    {
        s_cases = cases;
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
            if (!Selected(format, "read") && !Selected(format, "write"))
            {
                continue;
            }

            await RunFormatAsync(format, requests, rounds, directory);
        }
    }

    /// <summary>Bytes per request: 4 KiB at random offsets, any other size sequentially.</summary>
    private static int s_size = 4096;

    /// <summary>Which cases run: "all", or a format, an operation or both ("raw", "read", "qcow2-write").</summary>
    private static string s_cases = "all";

    private static bool Selected(string format, string op) =>
        s_cases == "all" || s_cases == format || s_cases == op || s_cases == $"{format}-{op}";

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

            // VIRT_BLK_FRESH_FILL sets the size of the writes that fill the image (1 MiB by default). On ext4 it decides
            // the page cache's folio sizes, and with them the host's own cost of a later 4 KiB write (about 3.8 us a
            // write into 1 MiB folios, 1.1 us into 64 KiB ones, on the test machine): a qcow2 image's data is written a
            // cluster at a time whatever the fill, a raw image's as the fill writes it.
            int fillSize = int.TryParse(Environment.GetEnvironmentVariable("VIRT_BLK_FRESH_FILL"), CultureInfo.InvariantCulture, out int f) && f is >= 4096 and <= (1 << 20) && (f & (f - 1)) == 0 ? f : 1 << 20;
            var chunk = new byte[fillSize];
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
                if (!Selected(format, type == 0 ? "read" : "write"))
                {
                    continue;
                }

                var countsBefore = inline.Device.InlineCounts;
                var ringBefore = inline.Device.RingCounts;
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

                // Warm up until the JIT has been quiet for half a second (at least a second, at most 20): tiered
                // compilation installs optimized code some time after the first calls, much later on a loaded machine
                // (its background compiler waits for a CPU too), and a case measured before would pay for unoptimized code.
                long warmStart = Stopwatch.GetTimestamp();
                long quietSince = warmStart;
                long compiled = System.Runtime.JitInfo.GetCompiledMethodCount();
                while (true)
                {
                    Time(256, HostRequest);
                    Time(256 / s_depth, i => inline.Request(type, offsets, i * s_depth));
                    Time(256 / s_depth, i => worker.Request(type, offsets, i * s_depth));
                    long now = Stopwatch.GetTimestamp();
                    long count = System.Runtime.JitInfo.GetCompiledMethodCount();
                    if (count != compiled)
                    {
                        (compiled, quietSince) = (count, now);
                    }

                    if ((now - warmStart > Stopwatch.Frequency && now - quietSince > Stopwatch.Frequency / 2) || now - warmStart > 20 * Stopwatch.Frequency)
                    {
                        break;
                    }
                }

                if (!inline.LastStatusesOk() || !worker.LastStatusesOk())
                {
                    throw new InvalidOperationException("The device answered a request of the warm-up with an error status.");
                }

                if (Environment.GetEnvironmentVariable("VIRT_BLK_FRESH_PROFILE") is "host" or "inline" or "worker")
                {
                    // One path only, for a profiler (perf record): its stacks are then the only ones of the run.
                    string only = Environment.GetEnvironmentVariable("VIRT_BLK_FRESH_PROFILE")!;
                    Action<int> request = only switch
                    {
                        "host" => HostRequest,
                        "inline" => i => inline.Request(type, offsets, i * s_depth),
                        _ => i => worker.Request(type, offsets, i * s_depth),
                    };
                    int calls = only == "host" ? requests * rounds : requests * rounds / s_depth;
                    long allocated = GC.GetTotalAllocatedBytes(precise: true);
                    var (p, pc) = Time(calls, request);
                    double bytes = (double)(GC.GetTotalAllocatedBytes(precise: true) - allocated) / calls;
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{format,-7} {(type == 0 ? "read" : "write"),-5} {only} only: {p / (only == "host" ? 1 : s_depth):F0} ns wall, {pc / (only == "host" ? 1 : s_depth):F0} ns cpu per request, {bytes:F1} bytes allocated per call"));
                    continue;
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

                var counts = inline.Device.InlineCounts;
                var ring = inline.Device.RingCounts;
                inline.Stages(type, offsets, requests, stages);
                double hm = Median(hostTimes), im = Median(inlineTimes), wm = Median(workerTimes);
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{format,-7} {(type == 0 ? "read" : "write"),-5} {hm,8:F0}  {im,9:F0} ({hm / im,4:F2})         {wm,9:F0} ({hm / wm,4:F2})   paired {Median(wallRatios):F2}, cpu {Median(cpuRatios):F2}"));
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"        inline stages ns: chain {stages[0]:F0}, notify+serve {stages[1]:F0}, take used {stages[2]:F0}; backend call alone {stages[3]:F0}; slow inline writes so far {inline.Device.InlineWrites.SlowWrites}"));
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"        inline case: {counts.Served - countsBefore.Served} requests served inline, {counts.LeftToWorker - countsBefore.LeftToWorker} notifications left one to the worker, {counts.WorkerBusy - countsBefore.WorkerBusy} found the worker busy; batches {inline.Device.InlineBatchPath ?? "none"}: {ring.Batches - ringBefore.Batches} batches, {ring.Requests - ringBefore.Requests} requests"));
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

    /// <summary>
    /// One device and the guest's side of its queue. The guest side does what a guest CPU does: plain stores of the
    /// request header, the three descriptors and the available entry into its RAM, a release store of the available
    /// index, the notification (an MMIO write, which the device serves), then loads of the used index. It allocates
    /// nothing and calls no checked guest-memory accessor, so the device's time is not inflated by the benchmark's own
    /// bookkeeping (a guest pays its side on its own CPU, without the host's heap).
    /// </summary>
    private sealed unsafe class Rig : IDisposable
    {
        private readonly GuestMemory _ram;
        private readonly MockVirtioDriver _driver;
        private readonly GuestAddress[] _header, _data, _status;
        private readonly byte* _descriptors;
        private readonly byte* _avail;
        private readonly byte* _used;
        private readonly ushort _size;
        private ushort _availIndex;
        private ushort _usedSeen;
        private bool _diagnosed;

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

            var queue = _driver.Queues[0];
            _size = queue.Size;
            _descriptors = Host(queue.DescriptorTable, 16 * _size);
            _avail = Host(queue.AvailRing, 6 + (2 * _size));
            _used = Host(queue.UsedRing, 6 + (8 * _size));
            _availIndex = queue.AvailIndex;
            _usedSeen = queue.UsedIndex;
        }

        public VirtioBlockDevice Device { get; }

        /// <summary>Makes the requests at <paramref name="offsets"/> from <paramref name="first"/> available (the depth's worth), notifies once, takes their used entries.</summary>
        public void Request(uint type, long[] offsets, int first)
        {
            for (int k = 0; k < s_depth; k++)
            {
                Chain(k, type, offsets[(first + k) & 4095]);
            }

            Volatile.Write(ref *(ushort*)(_avail + 2), _availIndex);
            _driver.Notify(0);
            WaitUsed((ushort)(_usedSeen + s_depth));
        }

        /// <summary>Times the stages of <paramref name="requests"/> requests (mean ns each) into <paramref name="stages"/>.</summary>
        public void Stages(uint type, long[] offsets, int requests, double[] stages)
        {
            long chain = 0, notify = 0, take = 0;
            for (int i = 0; i < requests; i++)
            {
                long t0 = Stopwatch.GetTimestamp();
                Chain(0, type, offsets[i & 4095]);
                Volatile.Write(ref *(ushort*)(_avail + 2), _availIndex);
                long t1 = Stopwatch.GetTimestamp();
                _driver.Notify(0);
                long t2 = Stopwatch.GetTimestamp();
                WaitUsed((ushort)(_usedSeen + 1));
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
            if (Environment.GetEnvironmentVariable("VIRT_BLK_FRESH_CALLS") == "1")
            {
                // CPU time of the host call alone into the benchmark's buffer and into the guest's data buffer, with and without RWF_NOWAIT.
                var guest = new[] { new HostBuffer((nint)Host(_data[0], Small), Small) };
                foreach (var (name, target, noWait) in new[] { ("pinned", buffers, false), ("pinned nowait", buffers, true), ("guest", guest, false), ("guest nowait", guest, true) })
                {
                    long cpu0 = ThreadCpuNanoseconds();
                    for (int i = 0; i < requests; i++)
                    {
                        if (noWait)
                        {
                            vectored.TryVectorNoWait(offsets[i & 4095], target, type == 1);
                        }
                        else if (type == 0)
                        {
                            vectored.ReadVector(offsets[i & 4095], target);
                        }
                        else
                        {
                            vectored.WriteVector(offsets[i & 4095], target);
                        }
                    }

                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"        call alone, {name}: {(double)(ThreadCpuNanoseconds() - cpu0) / requests:F0} ns cpu"));
                }
            }

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

        /// <summary>Whether every slot's last request was answered with status OK.</summary>
        public bool LastStatusesOk()
        {
            for (int k = 0; k < s_depth; k++)
            {
                if (*Host(_status[k], 1) != 0)
                {
                    return false;
                }
            }

            return true;
        }

        private byte* Host(GuestAddress address, int length)
        {
            if (!_ram.TryGetSpan(address, length, forWrite: true, out Span<byte> span))
            {
                throw new InvalidOperationException($"guest range {address} + {length} is not RAM");
            }

            return (byte*)System.Runtime.CompilerServices.Unsafe.AsPointer(ref System.Runtime.InteropServices.MemoryMarshal.GetReference(span));
        }

        /// <summary>Slot <paramref name="slot"/>'s request (descriptors 3 slot to 3 slot + 2) into the next available entry; the caller publishes the index.</summary>
        private void Chain(int slot, uint type, long offset)
        {
            byte* header = Host(_header[slot], 16);
            BinaryPrimitives.WriteUInt32LittleEndian(new Span<byte>(header, 4), type);
            BinaryPrimitives.WriteUInt64LittleEndian(new Span<byte>(header + 8, 8), (ulong)(offset / 512));
            ushort head = (ushort)(3 * slot);
            Descriptor(head, _header[slot], 16, MockSplitQueue.FlagNext, (ushort)(head + 1));
            Descriptor((ushort)(head + 1), _data[slot], (uint)Small, (ushort)(MockSplitQueue.FlagNext | (type == 0 ? MockSplitQueue.FlagWrite : 0)), (ushort)(head + 2));
            Descriptor((ushort)(head + 2), _status[slot], 1, MockSplitQueue.FlagWrite, 0);
            *(ushort*)(_avail + 4 + (2 * (_availIndex % _size))) = head;
            _availIndex++;
        }

        private void Descriptor(ushort index, GuestAddress address, uint length, ushort flags, ushort next)
        {
            byte* d = _descriptors + (16 * index);
            *(ulong*)d = address.Value;
            *(uint*)(d + 8) = length;
            *(ushort*)(d + 12) = flags;
            *(ushort*)(d + 14) = next;
        }

        /// <summary>Waits until the used index reaches <paramref name="target"/>, spinning (yielding) as a polling driver does.</summary>
        private void WaitUsed(ushort target)
        {
            if (Volatile.Read(ref *(ushort*)(_used + 2)) == target)
            {
                // Served on the notifying thread: no clock to read.
                _usedSeen = target;
                return;
            }

            // As the mock driver's wait: yield for the first 2 ms (a polling driver), then sleep 1 ms between looks, so a
            // worker that needs this CPU gets it on a loaded machine.
            var spin = default(SpinWait);
            long start = Stopwatch.GetTimestamp();
            long spinUntil = start + (Stopwatch.Frequency / 500);
            while (Volatile.Read(ref *(ushort*)(_used + 2)) != target)
            {
                long now = Stopwatch.GetTimestamp();
                if (!_diagnosed && now - start > 5 * Stopwatch.Frequency && Environment.GetEnvironmentVariable("VIRT_BLK_FRESH_DIAG") == "1")
                {
                    _diagnosed = true;
                    Console.WriteLine($"DIAG stalled 5 s: used {*(ushort*)(_used + 2)} target {target} avail {_availIndex} status 0x{_driver.Status:x} busy {Device.IsBusy} inline {Device.ServesInline} counts {Device.InlineCounts}; notifying again");
                    _driver.Notify(0);
                }

                if (now - start > 60 * Stopwatch.Frequency)
                {
                    throw new TimeoutException($"The device used no buffer (used index {*(ushort*)(_used + 2)}, waiting for {target}, available index {_availIndex}, device status 0x{_driver.Status:x}, worker busy {Device.IsBusy}, serves inline {Device.ServesInline}, inline counts {Device.InlineCounts}) within 60 s.");
                }

                spin.SpinOnce(sleep1Threshold: now < spinUntil ? -1 : 0);
            }

            _usedSeen = target;
        }
    }
}
