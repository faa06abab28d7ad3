using System.Globalization;
using System.Text;
using Virt.Cpu;

namespace Virt.Debugging;

/// <summary>
/// One GDB client: an all-stop session over <see cref="GdbConnection"/>. While GDB looks at the guest the VM is paused;
/// <c>c</c>, <c>s</c> and <c>vCont</c> resume it until a vCPU reports a debug event (which parks every vCPU), GDB sends
/// Ctrl-C, or the VM stops. Threads are vCPUs, numbered from 1.
/// </summary>
internal sealed class GdbSession
{
    private readonly VirtualMachine _vm;
    private readonly GuestDebugger _debugger;
    private readonly GdbConnection _connection;
    private int _registerThread;
    private int _resumeThread;
    private string _lastStop = "T05thread:01;";

    public GdbSession(VirtualMachine vm, GuestDebugger debugger, GdbConnection connection)
    {
        _vm = vm;
        _debugger = debugger;
        _connection = connection;
    }

    /// <summary>Serves the client until it detaches, kills the VM or disconnects; then removes every breakpoint and lets the guest run on.</summary>
    public async Task RunAsync(CancellationToken cancellationToken)
    {
        if (_vm.State == VirtualMachineState.Running)
        {
            await PauseGuestAsync(cancellationToken).ConfigureAwait(false);
        }

        _lastStop = _vm.Exit is { } exit ? ExitReply(exit) : StopReply(new DebugStop(0, DebugStopKind.Interrupted), attach: true);
        bool release = true;
        try
        {
            while (await _connection.Inputs.WaitToReadAsync(cancellationToken).ConfigureAwait(false))
            {
                if (!_connection.Inputs.TryRead(out var input) || input.IsInterrupt)
                {
                    continue; // Ctrl-C while the guest is stopped: nothing to interrupt
                }

                string packet = input.Packet!;
                if (packet == "k")
                {
                    release = false;
                    await _vm.StopAsync(cancellationToken).ConfigureAwait(false);
                    return;
                }

                if (packet.StartsWith('D'))
                {
                    Release();
                    release = false;
                    await _connection.SendAsync("OK", cancellationToken).ConfigureAwait(false);
                    await ResumeIfPausedAsync(cancellationToken).ConfigureAwait(false);
                    return;
                }

                string reply = await HandleAsync(packet, cancellationToken).ConfigureAwait(false);
                await _connection.SendAsync(reply, cancellationToken).ConfigureAwait(false);
                if (packet == "QStartNoAckMode")
                {
                    _connection.DisableAcks();
                }
            }
        }
        finally
        {
            if (release)
            {
                // The client disconnected without detaching: the guest must not stay stopped or keep host breakpoints.
                Release();
                await ResumeIfPausedAsync(CancellationToken.None).ConfigureAwait(false);
            }
        }
    }

    private void Release()
    {
        if (_vm.State is VirtualMachineState.Paused or VirtualMachineState.Created)
        {
            _debugger.Clear();
        }
    }

    private async Task ResumeIfPausedAsync(CancellationToken cancellationToken)
    {
        if (_vm.State == VirtualMachineState.Paused)
        {
            try
            {
                await _vm.ResumeAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (InvalidOperationException)
            {
                // The VM stopped meanwhile.
            }
        }
    }

    private async Task<string> HandleAsync(string packet, CancellationToken cancellationToken)
    {
        char command = packet.Length > 0 ? packet[0] : '\0';
        string args = packet.Length > 1 ? packet[1..] : "";
        switch (command)
        {
            case 'c':
            case 's':
            case 'C':
            case 'S':
                return await ResumeAsync(command is 's' or 'S' ? _resumeThread : -1, ResumeAddress(command, args), cancellationToken).ConfigureAwait(false);
            case 'v':
                return await VerboseAsync(packet, cancellationToken).ConfigureAwait(false);
            default:
                return HandleStopped(packet, command, args);
        }
    }

    /// <summary>The packets that look at or change the stopped guest.</summary>
    private string HandleStopped(string packet, char command, string args)
    {
        switch (command)
        {
            case '?':
                return _lastStop;
            case 'q':
                return Query(packet);
            case 'Q':
                return packet == "QStartNoAckMode" ? "OK" : "";
            case 'H':
                return SetThread(args);
            case 'T':
                return TryThread(args, out _) ? "OK" : "E01";
            case 'g':
                return ReadAllRegisters();
            case 'G':
                return WriteAllRegisters(args);
            case 'p':
                return ReadRegister(args);
            case 'P':
                return WriteRegister(args);
            case 'm':
                return ReadMemory(args);
            case 'M':
                return WriteMemory(args, binary: false);
            case 'X':
                return WriteMemory(args, binary: true);
            case 'Z':
            case 'z':
                return Breakpoint(command == 'Z', args);
            default:
                return "";
        }
    }

    private string Query(string packet)
    {
        if (packet.StartsWith("qSupported", StringComparison.Ordinal))
        {
            return $"PacketSize={GdbConnection.MaxPacket:x};qXfer:features:read+;swbreak+;hwbreak+;QStartNoAckMode+";
        }

        if (packet.StartsWith("qXfer:features:read:", StringComparison.Ordinal))
        {
            return FeatureRead(packet["qXfer:features:read:".Length..]);
        }

        if (packet == "qfThreadInfo")
        {
            return "m" + string.Join(',', Enumerable.Range(1, _debugger.VcpuCount).Select(t => t.ToString("x", CultureInfo.InvariantCulture)));
        }

        if (packet == "qsThreadInfo")
        {
            return "l";
        }

        if (packet == "qC")
        {
            return "QC" + (_registerThread + 1).ToString("x", CultureInfo.InvariantCulture);
        }

        if (packet == "qAttached")
        {
            return "1";
        }

        if (packet.StartsWith("qThreadExtraInfo,", StringComparison.Ordinal))
        {
            return TryThread(packet["qThreadExtraInfo,".Length..], out int t)
                ? Convert.ToHexString(Encoding.ASCII.GetBytes($"vCPU {t}")).ToLowerInvariant()
                : "E01";
        }

        if (packet.StartsWith("qSymbol", StringComparison.Ordinal))
        {
            return "OK";
        }

        return "";
    }

    private static string FeatureRead(string args)
    {
        // target.xml:offset,length
        int colon = args.IndexOf(':', StringComparison.Ordinal);
        if (colon < 0 || args[..colon] != "target.xml")
        {
            return "E00";
        }

        var range = args[(colon + 1)..].Split(',');
        if (range.Length != 2 || !TryHex(range[0], out ulong offset) || !TryHex(range[1], out ulong length))
        {
            return "E00";
        }

        string xml = GdbRegisterFile.TargetDescription;
        if (offset >= (ulong)xml.Length)
        {
            return "l";
        }

        int take = (int)Math.Min(length, (ulong)xml.Length - offset);
        string chunk = xml.Substring((int)offset, take);
        return ((int)offset + take >= xml.Length ? "l" : "m") + chunk;
    }

    private string SetThread(string args)
    {
        if (args.Length < 1)
        {
            return "E01";
        }

        char op = args[0];
        string id = args[1..];
        int thread;
        if (id is "0" or "-1")
        {
            thread = op == 'c' ? -1 : _registerThread;
        }
        else if (!TryThread(id, out thread))
        {
            return "E01";
        }

        if (op == 'g')
        {
            _registerThread = Math.Max(thread, 0);
        }
        else
        {
            _resumeThread = thread < 0 ? _registerThread : thread;
        }

        return "OK";
    }

    /// <summary>Parses a GDB thread id (hex, from 1) into a vCPU index.</summary>
    private bool TryThread(string id, out int vcpu)
    {
        vcpu = -1;
        if (!TryHex(id, out ulong t) || t < 1 || t > (ulong)_debugger.VcpuCount)
        {
            return false;
        }

        vcpu = (int)t - 1;
        return true;
    }

    private IVirtualCpu RegisterVcpu => _debugger.Vcpu(_registerThread);

    private string ReadAllRegisters()
    {
        var sb = new StringBuilder();
        Span<byte> value = stackalloc byte[16];
        for (int r = 0; r < GdbRegisterFile.Count; r++)
        {
            var slot = value[..GdbRegisterFile.SizeOf(r)];
            GdbRegisterFile.Read(RegisterVcpu, r, slot);
            AppendHex(sb, slot);
        }

        return sb.ToString();
    }

    private string WriteAllRegisters(string hex)
    {
        byte[] data;
        try
        {
            data = Convert.FromHexString(hex);
        }
        catch (FormatException)
        {
            return "E01";
        }

        // The registers the stub can write are taken from the image; the others (segment selectors, the x87 stack) must be unchanged.
        Span<byte> current = stackalloc byte[16];
        int offset = 0;
        for (int r = 0; r < GdbRegisterFile.Count && offset < data.Length; r++)
        {
            int size = GdbRegisterFile.SizeOf(r);
            if (offset + size > data.Length)
            {
                break;
            }

            var slot = current[..size];
            GdbRegisterFile.Read(RegisterVcpu, r, slot);
            var wanted = data.AsSpan(offset, size);
            if (!slot.SequenceEqual(wanted) && !GdbRegisterFile.Write(RegisterVcpu, r, wanted))
            {
                return "E02";
            }

            offset += size;
        }

        return "OK";
    }

    private string ReadRegister(string args)
    {
        if (!TryHex(args, out ulong n) || n >= (ulong)GdbRegisterFile.Count)
        {
            return "E01";
        }

        Span<byte> value = stackalloc byte[GdbRegisterFile.SizeOf((int)n)];
        GdbRegisterFile.Read(RegisterVcpu, (int)n, value);
        var sb = new StringBuilder();
        AppendHex(sb, value);
        return sb.ToString();
    }

    private string WriteRegister(string args)
    {
        int eq = args.IndexOf('=', StringComparison.Ordinal);
        if (eq < 0 || !TryHex(args[..eq], out ulong n) || n >= (ulong)GdbRegisterFile.Count)
        {
            return "E01";
        }

        byte[] value;
        try
        {
            value = Convert.FromHexString(args[(eq + 1)..]);
        }
        catch (FormatException)
        {
            return "E01";
        }

        if (value.Length != GdbRegisterFile.SizeOf((int)n))
        {
            return "E01";
        }

        return GdbRegisterFile.Write(RegisterVcpu, (int)n, value) ? "OK" : "E02";
    }

    private string ReadMemory(string args)
    {
        var parts = args.Split(',');
        if (parts.Length != 2 || !TryHex(parts[0], out ulong address) || !TryHex(parts[1], out ulong length) || length > GdbConnection.MaxPacket / 2)
        {
            return "E01";
        }

        var data = new byte[length];
        int read = _debugger.ReadLinear(_registerThread, address, data);
        if (read == 0 && length > 0)
        {
            return "E14"; // EFAULT
        }

        var sb = new StringBuilder(read * 2);
        AppendHex(sb, data.AsSpan(0, read));
        return sb.ToString();
    }

    private string WriteMemory(string args, bool binary)
    {
        int colon = args.IndexOf(':', StringComparison.Ordinal);
        if (colon < 0)
        {
            return "E01";
        }

        var parts = args[..colon].Split(',');
        if (parts.Length != 2 || !TryHex(parts[0], out ulong address) || !TryHex(parts[1], out ulong length))
        {
            return "E01";
        }

        string body = args[(colon + 1)..];
        byte[] data;
        if (binary)
        {
            data = new byte[body.Length];
            for (int i = 0; i < body.Length; i++)
            {
                data[i] = (byte)body[i];
            }
        }
        else
        {
            try
            {
                data = Convert.FromHexString(body);
            }
            catch (FormatException)
            {
                return "E01";
            }
        }

        if ((ulong)data.Length != length)
        {
            return "E01";
        }

        return data.Length == 0 || _debugger.WriteLinear(_registerThread, address, data) ? "OK" : "E14";
    }

    private string Breakpoint(bool insert, string args)
    {
        var parts = args.Split(',');
        if (parts.Length < 3 || !TryHex(parts[1], out ulong address) || !TryHex(parts[2].Split(';')[0], out ulong kind))
        {
            return "E01";
        }

        int length = (int)Math.Min(kind, 8);
        switch (parts[0])
        {
            case "0":
                if (insert)
                {
                    return _debugger.TryAddSoftwareBreakpoint(_registerThread, address) ? "OK" : "E01";
                }

                return _debugger.RemoveSoftwareBreakpoint(address) ? "OK" : "E01";
            case "1":
                return Hardware(insert, HostBreakpointKind.Execute, address, length);
            case "2":
                return Hardware(insert, HostBreakpointKind.Write, address, length);
            case "3":
                return Hardware(insert, HostBreakpointKind.Read, address, length);
            case "4":
                return Hardware(insert, HostBreakpointKind.Access, address, length);
            default:
                return "";
        }
    }

    private string Hardware(bool insert, HostBreakpointKind kind, ulong address, int length) =>
        (insert ? _debugger.TryAddHardware(kind, address, length) : _debugger.RemoveHardware(kind, address, length)) ? "OK" : "E01";

    private static ulong? ResumeAddress(char command, string args)
    {
        // c [addr], s [addr], C sig[;addr], S sig[;addr]: the signal is the guest's business, not the host's.
        string address = command is 'C' or 'S' ? (args.Contains(';', StringComparison.Ordinal) ? args[(args.IndexOf(';', StringComparison.Ordinal) + 1)..] : "") : args;
        return address.Length > 0 && TryHex(address, out ulong a) ? a : null;
    }

    private async Task<string> VerboseAsync(string packet, CancellationToken cancellationToken)
    {
        if (packet == "vCont?")
        {
            return "vCont;c;C;s;S";
        }

        if (packet.StartsWith("vCont;", StringComparison.Ordinal))
        {
            // vCont;action[:thread];... : the vCPU a step action names is stepped; every other vCPU continues.
            int step = -1;
            foreach (string action in packet["vCont;".Length..].Split(';'))
            {
                if (action.Length == 0 || action[0] is not ('s' or 'S'))
                {
                    continue;
                }

                int colon = action.IndexOf(':', StringComparison.Ordinal);
                if (colon < 0)
                {
                    step = _resumeThread;
                }
                else if (TryThread(action[(colon + 1)..], out int t))
                {
                    step = t;
                }
                else
                {
                    step = _registerThread;
                }

                break;
            }

            return await ResumeAsync(step, null, cancellationToken).ConfigureAwait(false);
        }

        return "";
    }

    /// <summary>Resumes the guest (stepping vCPU <paramref name="step"/> if not negative) and waits for the stop to report.</summary>
    private async Task<string> ResumeAsync(int step, ulong? address, CancellationToken cancellationToken)
    {
        if (_vm.Exit is { } done)
        {
            return await ExitReplyAsync(done, cancellationToken).ConfigureAwait(false);
        }

        if (address is ulong rip)
        {
            var regs = _debugger.Vcpu(Math.Max(step, _registerThread)).GetGeneralRegisters();
            regs.Rip = rip;
            _debugger.Vcpu(Math.Max(step, _registerThread)).SetGeneralRegisters(regs);
        }

        if (step >= 0 && (_debugger.Features & GuestDebugFeatures.SingleStep) == 0)
        {
            return "E01";
        }

        var stopTask = _debugger.PrepareResume(step);
        var exitTask = _vm.WaitForExitAsync(cancellationToken);
        if (_vm.State == VirtualMachineState.Created)
        {
            await _vm.StartAsync(cancellationToken).ConfigureAwait(false);
        }
        else
        {
            await _vm.ResumeAsync(cancellationToken).ConfigureAwait(false);
        }

        DebugStop? stop = null;
        try
        {
            while (stop is null)
            {
                var readTask = _connection.Inputs.WaitToReadAsync(cancellationToken).AsTask();
                var first = await Task.WhenAny(stopTask, exitTask, readTask).ConfigureAwait(false);
                if (first == exitTask)
                {
                    break;
                }

                if (first == stopTask)
                {
                    stop = await stopTask.ConfigureAwait(false);
                    break;
                }

                if (!await readTask.ConfigureAwait(false))
                {
                    // The client disconnected while the guest ran: the caller's cleanup releases the guest.
                    throw new OperationCanceledException("The GDB client disconnected.");
                }

                if (_connection.Inputs.TryPeek(out var input) && input.IsInterrupt)
                {
                    _connection.Inputs.TryRead(out _);
                    stop = new DebugStop(Math.Max(_registerThread, 0), DebugStopKind.Interrupted);
                }
                else if (_connection.Inputs.TryPeek(out _))
                {
                    // A packet while the guest runs (all-stop mode expects none): answered once the guest stops.
                    await Task.WhenAny(stopTask, exitTask).ConfigureAwait(false);
                }
            }

            if (stop is not null)
            {
                await PauseGuestAsync(cancellationToken).ConfigureAwait(false);
                if (stopTask.IsCompletedSuccessfully)
                {
                    stop = stopTask.Result; // a debug event that raced with Ctrl-C says more
                }
            }
        }
        finally
        {
            _debugger.Disarm();
        }

        if (_vm.Exit is { } exit || stop is null)
        {
            var e = _vm.Exit ?? await exitTask.ConfigureAwait(false);
            _lastStop = ExitReply(e);
            return await ExitReplyAsync(e, cancellationToken).ConfigureAwait(false);
        }

        _registerThread = stop.Value.Vcpu;
        _resumeThread = stop.Value.Vcpu;
        _lastStop = StopReply(stop.Value, attach: false);
        return _lastStop;
    }

    private async Task PauseGuestAsync(CancellationToken cancellationToken)
    {
        try
        {
            if (_vm.State == VirtualMachineState.Running)
            {
                await _vm.PauseAsync(cancellationToken).ConfigureAwait(false);
            }
        }
        catch (InvalidOperationException)
        {
            // The VM stopped before it could be paused: the exit is reported instead.
        }
    }

    private static string StopReply(DebugStop stop, bool attach)
    {
        string signal = stop.Kind == DebugStopKind.Interrupted && !attach ? "02" : "05";
        var sb = new StringBuilder("T").Append(signal).Append("thread:").Append((stop.Vcpu + 1).ToString("x", CultureInfo.InvariantCulture)).Append(';');
        switch (stop.Kind)
        {
            case DebugStopKind.SoftwareBreakpoint:
                sb.Append("swbreak:;");
                break;
            case DebugStopKind.HardwareBreakpoint:
                sb.Append("hwbreak:;");
                break;
            case DebugStopKind.Watchpoint when stop.Watch is { } w:
                string name = w.Kind switch
                {
                    HostBreakpointKind.Write => "watch",
                    HostBreakpointKind.Read => "rwatch",
                    _ => "awatch",
                };
                sb.Append(name).Append(':').Append(w.Address.ToString("x", CultureInfo.InvariantCulture)).Append(';');
                break;
        }

        return sb.ToString();
    }

    /// <summary>
    /// The end of the VM: <c>W</c> with the exit code for a guest that ended itself (debug-exit device, power-off, halt),
    /// <c>X</c> with SIGKILL's number otherwise (a fault, a triple fault, the host), after an <c>O</c> packet that shows
    /// GDB's user why.
    /// </summary>
    private async Task<string> ExitReplyAsync(VirtualMachineExit exit, CancellationToken cancellationToken)
    {
        await _connection.SendAsync("O" + Convert.ToHexString(Encoding.UTF8.GetBytes($"VM stopped: {exit.Description}\n")).ToLowerInvariant(), cancellationToken).ConfigureAwait(false);
        return ExitReply(exit);
    }

    private static string ExitReply(VirtualMachineExit exit) => exit.Reason is StopReason.DebugExit or StopReason.PowerOff or StopReason.Halted
        ? "W" + ((exit.ExitCode ?? 0) & 0xFF).ToString("x2", CultureInfo.InvariantCulture)
        : "X09";

    private static bool TryHex(string s, out ulong value) =>
        ulong.TryParse(s, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out value);

    private static void AppendHex(StringBuilder sb, ReadOnlySpan<byte> bytes)
    {
        foreach (byte b in bytes)
        {
            sb.Append(b.ToString("x2", CultureInfo.InvariantCulture));
        }
    }
}
