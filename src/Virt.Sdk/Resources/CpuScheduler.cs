using System.Diagnostics;
using Virt.Cpu;

namespace Virt.Resources;

/// <summary>
/// Shares a pool's CPUs between the vCPUs of its VMs, on every backend: at most <c>slots</c> vCPUs that keep a host
/// CPU busy run at once; when vCPUs wait for a slot, the one whose VM has used the least CPU per share gets the next
/// one (stride scheduling on measured CPU time), and a VM over its cap waits until its budget refills.
/// </summary>
/// <remarks>
/// <para>
/// A vCPU takes a slot before it enters the guest and keeps it across exits until a tick asks it to yield: its slice
/// is over and a vCPU with less CPU per share waits, or its VM is over its cap. The tick kicks it out of the guest
/// (<see cref="IVirtualCpu.RequestExit"/>: the interpreter stops between instructions, KVM leaves <c>KVM_RUN</c>).
/// </para>
/// <para>
/// CPU time is what the host says the vCPU thread used (Linux: <c>/proc/self/task/TID/schedstat</c>), so a VM whose
/// threads the host starves is not charged for the wait. A vCPU that sleeps inside the guest (a halted CPU waiting for
/// an interrupt) gives its slot up at the next tick and runs without one while it stays light; once it keeps a CPU
/// busy for a tick it queues for a slot again. So an idle VM holds no slot, and a waking one is not delayed behind the
/// busy ones by more than a tick. Where the host cannot tell (not Linux), a vCPU holding a slot is charged wall time.
/// </para>
/// </remarks>
internal sealed class CpuScheduler : IDisposable
{
    private readonly Lock _lock = new();
    private readonly List<VcpuRunner> _waiting = [];
    private readonly List<VcpuRunner> _running = [];
    private readonly List<CpuAccount> _accounts = [];
    private readonly AutoResetEvent _tickerWake = new(false);
    private readonly Thread _ticker;
    private readonly long _sliceNs;
    private volatile bool _disposed;
    private int _freeSlots;

    public CpuScheduler(int slots, TimeSpan slice)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(slots);
        _freeSlots = slots;
        _sliceNs = (long)slice.TotalNanoseconds;
        _ticker = new Thread(TickLoop) { IsBackground = true, Name = "Virt resource pool CPU scheduler" };
        _ticker.Start();
    }

    /// <summary>Grants of a slot so far.</summary>
    public long Grants { get; private set; }

    public CpuAccount CreateAccount(string name, int shares, double? limitCores)
    {
        var account = new CpuAccount(name, shares, limitCores, _sliceNs);
        lock (_lock)
        {
            account.VirtualTime = MinVirtualTime();
            _accounts.Add(account);
        }

        return account;
    }

    public void RemoveAccount(CpuAccount account)
    {
        lock (_lock)
        {
            _accounts.Remove(account);
        }
    }

    public static VcpuRunner CreateRunner(CpuAccount account, IVirtualCpu vcpu) => new(account, vcpu);

    /// <summary>
    /// Called by the vCPU thread before it enters the guest: returns at once while the vCPU holds its turn, otherwise
    /// waits for one. Returns false (without a turn) when <paramref name="abandon"/> says the thread has other work (a
    /// stop or pause); <see cref="VcpuRunner.Wake"/> makes a waiting thread check it.
    /// </summary>
    public bool Enter(VcpuRunner runner, Func<bool> abandon)
    {
        if (runner.State != RunnerState.Outside && !runner.YieldRequested)
        {
            return true;
        }

        runner.Clock ??= ThreadCpuClock.ForCurrentThread();
        lock (_lock)
        {
            LeaveLocked(runner);
        }

        // Over the cap: wait for the budget to refill (the ticker refills it and wakes the thread).
        long throttleStart = 0;
        while (runner.Account.Budget < 0)
        {
            if (abandon())
            {
                return false;
            }

            if (throttleStart == 0)
            {
                throttleStart = Stopwatch.GetTimestamp();
                lock (_lock)
                {
                    runner.State = RunnerState.Throttled;
                    _running.Add(runner);
                }

                _tickerWake.Set();
            }

            runner.Signal.Wait(TimeSpan.FromMilliseconds(Math.Max(1, _sliceNs / 1_000_000)));
            runner.Signal.Reset();
        }

        lock (_lock)
        {
            if (runner.State == RunnerState.Throttled)
            {
                _running.Remove(runner);
                runner.State = RunnerState.Outside;
            }

            if (throttleStart != 0)
            {
                runner.Account.ThrottledTicks += Stopwatch.GetTimestamp() - throttleStart;
            }

            runner.YieldRequested = false;
            SampleLocked(runner, charge: false);
            if (runner.Light)
            {
                runner.Idle = true;
                runner.State = RunnerState.RunningFree;
                runner.SliceStart = Stopwatch.GetTimestamp();
                _running.Add(runner);
                _tickerWake.Set();
                return true;
            }

            if (runner.Idle)
            {
                // Back from sleeping in the guest (or new): it may not bank the CPU it left unused while idle.
                runner.Account.VirtualTime = Math.Max(runner.Account.VirtualTime, MinVirtualTime() - _sliceNs);
                runner.Idle = false;
            }
            if (_freeSlots > 0 && !_waiting.Exists(w => w.Account.VirtualTime < runner.Account.VirtualTime))
            {
                GrantLocked(runner);
                return true;
            }

            runner.Signal.Reset();
            runner.State = RunnerState.Waiting;
            runner.WaitStartGrants = Grants;
            _waiting.Add(runner);
            _tickerWake.Set();
        }

        while (true)
        {
            runner.Signal.Wait();
            lock (_lock)
            {
                // Granted. A tick may already have found the thread asleep (it had not woken from this wait yet) and
                // let it run without the slot; that is a turn too, and waiting on would leave the vCPU stranded.
                if (runner.State is RunnerState.RunningSlot or RunnerState.RunningFree)
                {
                    return true;
                }

                if (abandon())
                {
                    _waiting.Remove(runner);
                    runner.State = RunnerState.Outside;
                    return false;
                }

                runner.Signal.Reset();
            }
        }
    }

    /// <summary>Called by the vCPU thread when it stops entering the guest for a while (pause, halt, stop).</summary>
    public void Leave(VcpuRunner runner)
    {
        lock (_lock)
        {
            LeaveLocked(runner);
        }
    }

    public void Dispose()
    {
        _disposed = true;
        _tickerWake.Set();
        _ticker.Join();
        _tickerWake.Dispose();
    }

    private void LeaveLocked(VcpuRunner runner)
    {
        switch (runner.State)
        {
            case RunnerState.RunningSlot:
                SampleLocked(runner, charge: true);
                _running.Remove(runner);
                _freeSlots++;
                runner.State = RunnerState.Outside;
                GrantWaitingLocked();
                break;
            case RunnerState.RunningFree:
                SampleLocked(runner, charge: true);
                _running.Remove(runner);
                runner.State = RunnerState.Outside;
                break;
            case RunnerState.Waiting:
                _waiting.Remove(runner);
                runner.State = RunnerState.Outside;
                break;
        }
    }

    private void GrantLocked(VcpuRunner runner)
    {
        _freeSlots--;
        Grants++;
        runner.State = RunnerState.RunningSlot;
        runner.SliceStart = Stopwatch.GetTimestamp();
        runner.Account.Grants++;
        _running.Add(runner);
        runner.Signal.Set();
        _tickerWake.Set();
    }

    private void GrantWaitingLocked()
    {
        while (_freeSlots > 0 && _waiting.Count > 0)
        {
            var next = _waiting[0];
            foreach (var w in _waiting)
            {
                if (w.Account.VirtualTime < next.Account.VirtualTime)
                {
                    next = w;
                }
            }

            _waiting.Remove(next);
            next.Account.MaxGrantsWaited = Math.Max(next.Account.MaxGrantsWaited, Grants - next.WaitStartGrants);
            GrantLocked(next);
        }
    }

    private double MinVirtualTime()
    {
        double min = double.MaxValue;
        foreach (var r in _running)
        {
            min = Math.Min(min, r.Account.VirtualTime);
        }

        foreach (var r in _waiting)
        {
            min = Math.Min(min, r.Account.VirtualTime);
        }

        return min == double.MaxValue ? (_accounts.Count > 0 ? _accounts.Min(a => a.VirtualTime) : 0) : min;
    }

    // Reads the runner's thread counters; with charge, bills the CPU used since the last read to its VM.
    // Returns the nanoseconds the thread was on a CPU or waiting for one since the last read (its demand).
    private static long SampleLocked(VcpuRunner runner, bool charge)
    {
        long now = Stopwatch.GetTimestamp();
        long wallNs = (long)Stopwatch.GetElapsedTime(runner.LastSampleTicks, now).TotalNanoseconds;
        runner.LastSampleTicks = now;
        if (runner.Clock is { } clock && clock.TryRead(out long run, out long wait))
        {
            long dRun = run - runner.LastRunNs;
            long dWait = wait - runner.LastWaitNs;
            runner.LastRunNs = run;
            runner.LastWaitNs = wait;
            if (charge && dRun > 0)
            {
                runner.Account.Charge(dRun);
            }

            return Math.Max(0, dRun) + Math.Max(0, dWait);
        }

        // No counters: a vCPU holding a slot is taken to be busy.
        if (charge && runner.State == RunnerState.RunningSlot)
        {
            runner.Account.Charge(wallNs);
            return wallNs;
        }

        return 0;
    }

    private void TickLoop()
    {
        long last = Stopwatch.GetTimestamp();
        while (!_disposed)
        {
            bool busy;
            lock (_lock)
            {
                busy = _running.Count > 0 || _waiting.Count > 0;
            }

            if (!busy)
            {
                _tickerWake.WaitOne();
                last = Stopwatch.GetTimestamp();
                continue;
            }

            Thread.Sleep(TimeSpan.FromTicks(Math.Max(TimeSpan.TicksPerMillisecond, _sliceNs / 100 / 2)));
            long now = Stopwatch.GetTimestamp();
            long elapsedNs = (long)Stopwatch.GetElapsedTime(last, now).TotalNanoseconds;
            last = now;
            Tick(now, elapsedNs);
        }
    }

    private void Tick(long now, long elapsedNs)
    {
        var kick = new List<VcpuRunner>();
        lock (_lock)
        {
            foreach (var a in _accounts)
            {
                a.Refill(elapsedNs);
            }

            foreach (var r in _running.ToArray())
            {
                switch (r.State)
                {
                    case RunnerState.Throttled:
                        if (r.Account.Budget >= 0)
                        {
                            r.Signal.Set();
                        }

                        continue;
                    case RunnerState.RunningSlot:
                    {
                        long demand = SampleLocked(r, charge: true);
                        long heldNs = (long)Stopwatch.GetElapsedTime(r.SliceStart, now).TotalNanoseconds;
                        if (r.Clock?.IsAvailable == true && demand * 4 < elapsedNs && heldNs >= elapsedNs && r.Clock.IsSleeping())
                        {
                            // Asleep in the guest (a halted CPU): it gives its slot up and runs without one.
                            r.Light = true;
                            r.State = RunnerState.RunningFree;
                            _freeSlots++;
                            continue;
                        }

                        bool someoneAhead = _waiting.Exists(w => w.Account.VirtualTime < r.Account.VirtualTime);
                        if ((heldNs >= _sliceNs && someoneAhead) || r.Account.Budget < 0)
                        {
                            RequestYield(r, kick);
                        }

                        break;
                    }

                    case RunnerState.RunningFree:
                    {
                        // Busy again: it ran or wanted to run for half the tick and is not back asleep now (a vCPU
                        // that woke for an interrupt and halted again stays light, however long the host made it wait).
                        long before = r.Account.CpuNanoseconds;
                        SampleLocked(r, charge: true);
                        long ran = r.Account.CpuNanoseconds - before;
                        // Light work (an interrupt handled between halts, a timer polled) stays without a slot even
                        // when the host keeps the thread waiting; a vCPU that ran a quarter of the tick, or a tenth of
                        // each of three ticks and is still runnable (a busy vCPU on a loaded host), queues for one.
                        r.RunnableTicks = ran * 10 > elapsedNs && r.Clock?.IsSleeping() == false ? r.RunnableTicks + 1 : 0;
                        if (ran * 4 > elapsedNs || r.RunnableTicks >= 3 || r.Account.Budget < 0)
                        {

                            // It keeps a CPU busy again: back to the queue for a slot.
                            r.Light = false;
                            r.RunnableTicks = 0;
                            RequestYield(r, kick);
                        }

                        break;
                    }
                }
            }

            GrantWaitingLocked();
        }

        foreach (var r in kick)
        {
            r.Vcpu.RequestExit();
        }
    }

    private static void RequestYield(VcpuRunner r, List<VcpuRunner> kick)
    {
        if (!r.YieldRequested)
        {
            r.YieldRequested = true;
            r.Account.Preemptions++;
            kick.Add(r);
        }
    }
}

internal enum RunnerState
{
    Outside,
    Waiting,
    Throttled,
    RunningSlot,
    RunningFree,
}

/// <summary>One vCPU's place in a <see cref="CpuScheduler"/>. Fields are guarded by the scheduler's lock unless volatile.</summary>
internal sealed class VcpuRunner(CpuAccount account, IVirtualCpu vcpu)
{
    private volatile RunnerState _state;
    private volatile bool _yield;

    public CpuAccount Account { get; } = account;

    public IVirtualCpu Vcpu { get; } = vcpu;

    public ManualResetEventSlim Signal { get; } = new(false);

    public ThreadCpuClock? Clock { get; set; }

    public RunnerState State { get => _state; set => _state = value; }

    public bool YieldRequested { get => _yield; set => _yield = value; }

    public bool Light { get; set; }

    /// <summary>Consecutive ticks at which a vCPU running without a slot had run and was still runnable.</summary>
    public int RunnableTicks { get; set; }

    /// <summary>Whether the vCPU last ran without a slot (asleep in the guest) or has not run yet.</summary>
    public bool Idle { get; set; } = true;

    public long SliceStart { get; set; }

    public long LastSampleTicks { get; set; } = Stopwatch.GetTimestamp();

    public long LastRunNs { get; set; }

    public long LastWaitNs { get; set; }

    public long WaitStartGrants { get; set; }

    /// <summary>Makes a thread waiting in <see cref="CpuScheduler.Enter"/> re-check whether it should give up.</summary>
    public void Wake() => Signal.Set();
}

/// <summary>One VM's CPU account: shares, cap, CPU used (charged by the scheduler), budget.</summary>
internal sealed class CpuAccount
{
    private readonly long _burstNs;
    private long _cpuNs;
    private double _budget;

    public CpuAccount(string name, int shares, double? limitCores, long sliceNs)
    {
        Name = name;
        Shares = shares;
        LimitCores = limitCores;
        _burstNs = limitCores is double l ? (long)(l * sliceNs * 2) : 0;
        _budget = _burstNs;
    }

    public string Name { get; }

    public int Shares { get; }

    public double? LimitCores { get; }

    /// <summary>CPU used per share, in nanoseconds: the scheduler runs the lowest first.</summary>
    public double VirtualTime { get; set; }

    /// <summary>CPU nanoseconds left before the cap bites (negative: over the cap). Always non-negative without a cap.</summary>
    public double Budget => LimitCores is null ? 0 : Volatile.Read(ref _budget);

    public long CpuNanoseconds => Interlocked.Read(ref _cpuNs);

    public long ThrottledTicks { get; set; }

    public long Preemptions { get; set; }

    public long Grants { get; set; }

    public long MaxGrantsWaited { get; set; }

    public void Charge(long ns)
    {
        Interlocked.Add(ref _cpuNs, ns);
        VirtualTime += (double)ns * 1024 / Shares;
        if (LimitCores is not null)
        {
            Volatile.Write(ref _budget, _budget - ns);
        }
    }

    public void Refill(long elapsedNs)
    {
        if (LimitCores is double l)
        {
            Volatile.Write(ref _budget, Math.Min(_burstNs, _budget + (elapsedNs * l)));
        }
    }
}
