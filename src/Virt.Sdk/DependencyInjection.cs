using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Virt;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>
/// Options for <see cref="VirtualizationServiceCollectionExtensions.AddVirtualization(IServiceCollection, Action{VirtualizationOptions}?)"/>,
/// read through <see cref="IOptions{TOptions}"/>: set them in code, bind them from configuration (the
/// <see cref="SectionName"/> section by convention), and they are validated when the host starts.
/// </summary>
public sealed class VirtualizationOptions
{
    /// <summary>The configuration section these options are usually bound from: <c>Virtualization</c>.</summary>
    public const string SectionName = "Virtualization";

    /// <summary>The backend every builder from the factory starts with. Default: <see cref="BackendKind.Auto"/>.</summary>
    public BackendKind Backend { get; set; } = BackendKind.Auto;

    /// <summary>Default guest memory in MiB for builders from the factory. Default: 64.</summary>
    public int DefaultMemoryMiB { get; set; } = 64;

    /// <summary>Default vCPU count for builders from the factory. Default: 1.</summary>
    public int DefaultVcpuCount { get; set; } = 1;
}

/// <summary>Creates <see cref="VirtualMachineBuilder"/>s preconfigured from the container's options and logging.</summary>
public interface IVirtualMachineFactory
{
    /// <summary>A new builder with the configured backend, defaults and logger factory.</summary>
    VirtualMachineBuilder CreateBuilder();
}

/// <summary>Returned by <see cref="VirtualizationServiceCollectionExtensions.AddVirtualization(IServiceCollection, Action{VirtualizationOptions}?)"/> for further configuration.</summary>
public interface IVirtualizationBuilder
{
    /// <summary>The service collection being configured.</summary>
    IServiceCollection Services { get; }
}

/// <summary>Registers Virt.Sdk in an <see cref="IServiceCollection"/>.</summary>
public static class VirtualizationServiceCollectionExtensions
{
    /// <summary>
    /// Registers an <see cref="IVirtualMachineFactory"/> singleton whose builders use <see cref="VirtualizationOptions"/>
    /// (through <see cref="IOptions{TOptions}"/>) and log through the container's <see cref="ILoggerFactory"/> when one
    /// is registered. Every call adds <paramref name="configure"/> to the options' configuration, in order, so calls
    /// compose (a later call's values win); the factory is registered once. The options are validated when the host
    /// starts (<c>ValidateOnStart</c>) or, without a host, when the factory is first resolved: an invalid value throws
    /// <see cref="OptionsValidationException"/> naming the setting and what to change.
    /// </summary>
    public static IVirtualizationBuilder AddVirtualization(this IServiceCollection services, Action<VirtualizationOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        services.AddOptions<VirtualizationOptions>().ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<VirtualizationOptions>, VirtualizationOptionsValidator>());
        if (configure is not null)
        {
            services.Configure(configure);
        }

        services.TryAddSingleton<IVirtualMachineFactory>(sp => new VirtualMachineFactory(
            sp.GetRequiredService<IOptions<VirtualizationOptions>>().Value,
            (ILoggerFactory?)sp.GetService(typeof(ILoggerFactory))));
        return new VirtualizationBuilder(services);
    }

    /// <summary>
    /// Registers Virt.Sdk as <see cref="AddVirtualization(IServiceCollection, Action{VirtualizationOptions}?)"/> does,
    /// with the options bound from <paramref name="configuration"/> (e.g. <c>configuration.GetSection("Virtualization")</c>
    /// holding <c>Backend</c>, <c>DefaultMemoryMiB</c>, <c>DefaultVcpuCount</c>). Binding follows configuration reloads
    /// for <see cref="IOptionsMonitor{TOptions}"/>; the factory reads the value once.
    /// </summary>
    public static IVirtualizationBuilder AddVirtualization(this IServiceCollection services, IConfiguration configuration)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configuration);
        var builder = services.AddVirtualization();
        services.AddOptions<VirtualizationOptions>().Bind(configuration);
        return builder;
    }

    /// <summary>Sets the backend of the factory's builders (composes with the other configuration, in call order).</summary>
    public static IVirtualizationBuilder UseBackend(this IVirtualizationBuilder builder, BackendKind backend)
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.Services.Configure<VirtualizationOptions>(o => o.Backend = backend);
        return builder;
    }

    private sealed class VirtualizationBuilder(IServiceCollection services) : IVirtualizationBuilder
    {
        public IServiceCollection Services { get; } = services;
    }

    private sealed class VirtualMachineFactory(VirtualizationOptions options, ILoggerFactory? loggerFactory) : IVirtualMachineFactory
    {
        public VirtualMachineBuilder CreateBuilder()
        {
            var b = VirtualMachine.CreateBuilder()
                .WithBackend(options.Backend)
                .WithMemoryMiB(options.DefaultMemoryMiB)
                .WithVcpus(options.DefaultVcpuCount);
            return loggerFactory is null ? b : b.WithLogging(loggerFactory);
        }
    }
}
