using System.Text;
using Iced.Intel;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Virt.Boot;
using Virt.Testing;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Virt.Sdk.Tests;

public sealed class VirtualMachineTests
{
    private const ulong Load = 0x100000;

    public static TheoryData<string> Backends => FlatGuestVm.Backends;

    private static VirtualMachineBuilder Builder(string backend) => FlatGuestVm.Builder(backend);

    private static byte[] Code(Action<Assembler> emit, int bitness = 64, ulong origin = Load) => GuestProgram.Assemble(bitness, origin, emit);

    private static void Print(Assembler a, string text)
    {
        a.mov(dx, 0x3F8);
        foreach (byte b in Encoding.ASCII.GetBytes(text))
        {
            a.mov(al, b);
            a.@out(dx, al);
        }
    }

    private static void DebugExit(Assembler a, byte code)
    {
        a.mov(dx, VirtualMachineBuilder.DefaultDebugExitPort);
        a.mov(al, code);
        a.@out(dx, al);
        a.hlt();
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Long_mode_guest_prints_through_the_uart_and_stops_with_its_exit_code(string backend)
    {
        var output = new StringWriter();
        await using var vm = Builder(backend)
            .WithFlatBinary(Code(a => { Print(a, "hi!\n"); DebugExit(a, 42); }), new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load), StartMode.Long64)
            .WithSerialConsole(output)
            .WithDebugExit()
            .Build();
        var exit = await vm.RunAsync(TestContext.Current.CancellationToken);
        Assert.Equal(StopReason.DebugExit, exit.Reason);
        Assert.Equal(42, exit.ExitCode);
        Assert.Equal("hi!\n", output.ToString());
        Assert.Equal(VirtualMachineState.Stopped, vm.State);
        Assert.Equal(backend, vm.BackendSelection.Name);
    }

    [Fact]
    public async Task Guest_halting_with_interrupts_disabled_and_an_interrupt_controller_stops_with_halted()
    {
        await using var vm = Builder("interpreter")
            .WithInterruptController()
            .WithFlatBinary(Code(a => { a.cli(); a.hlt(); a.jmp(Load); }), new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load), StartMode.Long64)
            .Build();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        timeout.CancelAfter(TimeSpan.FromSeconds(30));
        var exit = await vm.RunAsync(timeout.Token);
        Assert.True(exit.Reason == StopReason.Halted, exit.Description);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Real_mode_guest_runs_from_a_segment_and_leaves_its_registers(string backend)
    {
        const ulong realLoad = 0x7C00;
        await using var vm = Builder(backend)
            .WithFlatBinary(Code(a => { a.mov(cx, 0x1234); a.mov(bx, cs); Print(a, "R"); a.hlt(); }, 16, 0x7C00), new GuestAddress(realLoad))
            .WithEntryPoint(new GuestAddress(realLoad), StartMode.Real)
            .WithSerialConsole(new StringWriter())
            .Build();
        var exit = await vm.RunAsync(TestContext.Current.CancellationToken);
        Assert.True(exit.Reason == StopReason.Halted, exit.Description);
        var regs = vm.GetRegisters(0);
        Assert.Equal(0x1234UL, regs.Rcx & 0xFFFF);
        Assert.Equal(0UL, regs.Rbx & 0xFFFF);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Protected_mode_guest_runs_32_bit_code(string backend)
    {
        var output = new StringWriter();
        await using var vm = Builder(backend)
            .WithFlatBinary(Code(a => { a.mov(eax, 0xDEADBEEF); a.mov(ecx, eax); a.shr(ecx, 16); Print(a, "P"); a.hlt(); }, 32), new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load), StartMode.Protected32)
            .WithSerialConsole(output)
            .Build();
        var exit = await vm.RunAsync(TestContext.Current.CancellationToken);
        Assert.Equal(StopReason.Halted, exit.Reason);
        Assert.Equal("P", output.ToString());
        Assert.Equal(0xDEADUL, vm.GetRegisters(0).Rcx);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Cancelling_a_spinning_guest_stops_it_with_cancelled(string backend)
    {
        await using var vm = Builder(backend)
            .WithFlatBinary(Code(a => { var l = a.CreateLabel(); a.Label(ref l); a.jmp(l); }), new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load))
            .Build();
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(200));
        var exit = await vm.RunAsync(cts.Token);
        Assert.Equal(StopReason.Cancelled, exit.Reason);
        Assert.Equal(VirtualMachineState.Stopped, vm.State);
    }

    [Fact]
    public async Task A_token_cancelled_before_the_run_starts_nothing_and_throws()
    {
        await using var vm = Builder("interpreter")
            .WithFlatBinary(Code(a => a.hlt()), new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load))
            .Build();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => vm.RunAsync(new CancellationToken(canceled: true)));
        Assert.Equal(VirtualMachineState.Created, vm.State);
        var exit = await vm.RunAsync(TestContext.Current.CancellationToken);
        Assert.Equal(StopReason.Halted, exit.Reason);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Pause_freezes_the_guest_and_resume_continues_it(string backend)
    {
        await using var vm = Builder(backend)
            .WithFlatBinary(Code(a =>
            {
                var l = a.CreateLabel();
                a.mov(rbx, 0x200000);
                a.Label(ref l);
                a.inc(__qword_ptr[rbx]);
                a.jmp(l);
            }), new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load))
            .Build();
        var states = new List<VirtualMachineState>();
        vm.StateChanged += (_, e) => { lock (states) { states.Add(e.NewState); } };
        var ct = TestContext.Current.CancellationToken;
        await vm.StartAsync(ct);
        await WaitUntil(() => vm.Memory.Read<ulong>(new GuestAddress(0x200000)) > 0, ct);
        await vm.PauseAsync(ct);
        ulong a1 = vm.Memory.Read<ulong>(new GuestAddress(0x200000));
        await Task.Delay(100, ct);
        ulong a2 = vm.Memory.Read<ulong>(new GuestAddress(0x200000));
        Assert.Equal(a1, a2);
        Assert.InRange(vm.GetRegisters(0).Rip, Load, Load + 0x20);
        await vm.ResumeAsync(ct);
        await WaitUntil(() => vm.Memory.Read<ulong>(new GuestAddress(0x200000)) > a2, ct);
        var exit = await vm.StopAsync(ct);
        Assert.Equal(StopReason.StoppedByHost, exit.Reason);
        lock (states)
        {
            Assert.Equal([VirtualMachineState.Running, VirtualMachineState.Paused, VirtualMachineState.Running, VirtualMachineState.Stopped], states);
        }
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Triple_fault_stops_with_shutdown(string backend)
    {
        await using var vm = Builder(backend)
            .WithFlatBinary(Code(a => a.ud2()), new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load))
            .Build();
        var exit = await vm.RunAsync(TestContext.Current.CancellationToken);
        Assert.Equal(StopReason.Shutdown, exit.Reason);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Two_vcpus_run_and_both_print(string backend)
    {
        var output = new StringWriter();
        await using var vm = Builder(backend)
            .WithVcpus(2)
            .WithFlatBinary(Code(a =>
            {
                a.mov(dx, 0x3F8);
                a.lea(eax, __[rdi + 'A']);
                a.@out(dx, al);
                a.hlt();
            }), new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load))
            .WithSerialConsole(output)
            .Build();
        var exit = await vm.RunAsync(TestContext.Current.CancellationToken);
        Assert.Equal(StopReason.Halted, exit.Reason);
        var text = output.ToString();
        Assert.Equal(2, text.Length);
        Assert.Contains('A', text);
        Assert.Contains('B', text);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Lifecycle_methods_in_the_wrong_state_say_what_is_wrong(string backend)
    {
        var vm = Builder(backend)
            .WithFlatBinary(Code(a => a.hlt()), new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load))
            .Build();
        var ct = TestContext.Current.CancellationToken;
        var ex = await Assert.ThrowsAsync<InvalidOperationException>(() => vm.PauseAsync(ct));
        Assert.Contains("Created", ex.Message, StringComparison.Ordinal);
        await vm.RunAsync(ct);
        // A stopped VM starts again from a cold reset (ColdResetTests), but it cannot be resumed or paused.
        var resume = await Assert.ThrowsAsync<InvalidOperationException>(() => vm.ResumeAsync(ct));
        Assert.Contains("while it is Stopped; it must be Paused", resume.Message, StringComparison.Ordinal);
        await vm.DisposeAsync();
        await vm.DisposeAsync();
        Assert.Equal(VirtualMachineState.Disposed, vm.State);

        // A disposed VM is named in the exception, not the lock inside it.
        foreach (var call in new Func<Task>[] { () => vm.StartAsync(ct), () => vm.PauseAsync(ct), () => vm.ResumeAsync(ct), () => vm.StopAsync(ct), () => vm.ResetAsync(ct) })
        {
            var disposed = await Assert.ThrowsAsync<ObjectDisposedException>(call);
            Assert.Contains(vm.Name, disposed.ObjectName, StringComparison.Ordinal);
            Assert.Contains("CreateBuilder", disposed.Message, StringComparison.Ordinal);
            Assert.DoesNotContain("Semaphore", disposed.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Dependency_injection_factory_builds_with_the_configured_backend_and_logs()
    {
        var services = new ServiceCollection();
        var provider = new RecordingLoggerProvider();
        services.AddLogging(b => b.AddProvider(provider).SetMinimumLevel(LogLevel.Debug));
        services.AddVirtualization(o => o.DefaultMemoryMiB = 8).UseBackend(BackendKind.Interpreter);
        await using var sp = services.BuildServiceProvider();
        var factory = sp.GetRequiredService<IVirtualMachineFactory>();
        Assert.Same(factory, sp.GetRequiredService<IVirtualMachineFactory>());
        await using var vm = factory.CreateBuilder()
            .WithFlatBinary(Code(a => a.hlt()), new GuestAddress(Load))
            .WithEntryPoint(new GuestAddress(Load))
            .Build();
        Assert.Equal("interpreter", vm.BackendSelection.Name);
        Assert.Equal(8UL << 20, vm.Memory.TotalSize);
        Assert.Contains(provider.Messages, m => m.Contains("created on interpreter", StringComparison.Ordinal));
    }


    private static async Task WaitUntil(Func<bool> condition, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "condition not reached in 20 s");
            await Task.Delay(5, ct);
        }
    }

    private sealed class RecordingLoggerProvider : ILoggerProvider
    {
        public List<string> Messages { get; } = [];

        public ILogger CreateLogger(string categoryName) => new Logger(this);

        public void Dispose() { }

        private sealed class Logger(RecordingLoggerProvider owner) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => true;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
            {
                lock (owner.Messages)
                {
                    owner.Messages.Add(formatter(state, exception));
                }
            }
        }
    }
}
