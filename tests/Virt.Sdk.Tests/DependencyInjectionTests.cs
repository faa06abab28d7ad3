using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Xunit;

namespace Virt.Sdk.Tests;

public sealed class DependencyInjectionTests
{
    private static VirtualizationOptions Options(IServiceCollection services)
    {
        using var sp = services.BuildServiceProvider();
        return sp.GetRequiredService<IOptions<VirtualizationOptions>>().Value;
    }

    [Fact]
    public void Add_virtualization_twice_composes_the_options_and_registers_one_factory()
    {
        var services = new ServiceCollection();
        services.AddVirtualization(o => o.DefaultMemoryMiB = 8).UseBackend(BackendKind.Interpreter);
        services.AddVirtualization(o => o.DefaultMemoryMiB = 16);
        services.AddVirtualization(o => o.DefaultVcpuCount = 2);

        Assert.Single(services, d => d.ServiceType == typeof(IVirtualMachineFactory));
        Assert.Single(services, d => d.ServiceType == typeof(IValidateOptions<VirtualizationOptions>));
        var options = Options(services);
        Assert.Equal(16, options.DefaultMemoryMiB);
        Assert.Equal(2, options.DefaultVcpuCount);
        Assert.Equal(BackendKind.Interpreter, options.Backend);
    }

    [Fact]
    public async Task Options_bind_from_configuration_and_the_factory_uses_them()
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Virtualization:Backend"] = "Interpreter",
            ["Virtualization:DefaultMemoryMiB"] = "12",
            ["Virtualization:DefaultVcpuCount"] = "1",
        }).Build();
        var services = new ServiceCollection();
        services.AddVirtualization(configuration.GetSection(VirtualizationOptions.SectionName));
        await using var sp = services.BuildServiceProvider();

        var options = sp.GetRequiredService<IOptions<VirtualizationOptions>>().Value;
        Assert.Equal(BackendKind.Interpreter, options.Backend);
        Assert.Equal(12, options.DefaultMemoryMiB);
        await using var vm = sp.GetRequiredService<IVirtualMachineFactory>().CreateBuilder()
            .WithFlatBinary(new byte[] { 0xF4 }, new GuestAddress(0x100000))
            .WithEntryPoint(new GuestAddress(0x100000))
            .Build();
        Assert.Equal("interpreter", vm.BackendSelection.Name);
        Assert.Equal(12UL << 20, vm.Memory.TotalSize);
    }

    [Fact]
    public void Invalid_options_fail_validation_at_start_naming_each_setting()
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Virtualization:DefaultMemoryMiB"] = "-5",
            ["Virtualization:DefaultVcpuCount"] = "0",
        }).Build();
        var services = new ServiceCollection();
        services.AddVirtualization(configuration.GetSection(VirtualizationOptions.SectionName));
        using var sp = services.BuildServiceProvider();

        // What a host runs when it starts (ValidateOnStart).
        var e = Assert.Throws<OptionsValidationException>(() => sp.GetRequiredService<IStartupValidator>().Validate());
        Assert.Contains("Virtualization:DefaultMemoryMiB is -5", e.Message, StringComparison.Ordinal);
        Assert.Contains("Virtualization:DefaultVcpuCount is 0", e.Message, StringComparison.Ordinal);

        // Without a host, resolving the factory validates too.
        Assert.Throws<OptionsValidationException>(() => sp.GetRequiredService<IVirtualMachineFactory>());
    }

    [Fact]
    public async Task A_guest_fault_logs_a_warning_with_a_stable_event_id_not_information()
    {
        var provider = new RecordingProvider();
        await using (var vm = VirtualMachine.CreateBuilder()
            .WithInterpreter()
            .WithMemoryMiB(4)
            .WithFlatBinary(new byte[] { 0x0F, 0x0B }, new GuestAddress(0x100000))   // ud2 with no IDT: a triple fault
            .WithEntryPoint(new GuestAddress(0x100000))
            .WithLogging(LoggerFactory.Create(b => b.AddProvider(provider).SetMinimumLevel(LogLevel.Debug)))
            .Build())
        {
            var exit = await vm.RunAsync(TestContext.Current.CancellationToken);
            Assert.True(exit.Reason is StopReason.Shutdown or StopReason.GuestFault, exit.Description);
        }

        var created = Assert.Single(provider.Entries, e => e.Id.Id == 1000);
        Assert.Equal(LogLevel.Information, created.Level);
        var stopped = Assert.Single(provider.Entries, e => e.Id.Id == 1003);
        Assert.Equal(LogLevel.Warning, stopped.Level);
        Assert.Equal("LogStoppedByFault", stopped.Id.Name);
        Assert.DoesNotContain(provider.Entries, e => e.Id.Id == 1002);
    }

    private sealed class RecordingProvider : ILoggerProvider
    {
        public List<(LogLevel Level, EventId Id, string Message)> Entries { get; } = [];

        public ILogger CreateLogger(string categoryName) => new Logger(this);

        public void Dispose() { }

        private sealed class Logger(RecordingProvider owner) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => true;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
            {
                lock (owner.Entries)
                {
                    owner.Entries.Add((logLevel, eventId, formatter(state, exception)));
                }
            }
        }
    }
}
