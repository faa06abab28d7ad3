using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Virt;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Options for <see cref="VirtualizationServiceCollectionExtensions.AddVirtualization"/>.</summary>
public sealed class VirtualizationOptions
{
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

/// <summary>Returned by <see cref="VirtualizationServiceCollectionExtensions.AddVirtualization"/> for further configuration.</summary>
public interface IVirtualizationBuilder
{
    /// <summary>The service collection being configured.</summary>
    IServiceCollection Services { get; }
}

/// <summary>Registers Virt.Sdk in an <see cref="IServiceCollection"/>.</summary>
public static class VirtualizationServiceCollectionExtensions
{
    /// <summary>
    /// Registers an <see cref="IVirtualMachineFactory"/> singleton (if none is registered yet) whose builders
    /// use the options set by <paramref name="configure"/> and log through the container's
    /// <see cref="ILoggerFactory"/> when one is registered.
    /// </summary>
    public static IVirtualizationBuilder AddVirtualization(this IServiceCollection services, Action<VirtualizationOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        var options = new VirtualizationOptions();
        configure?.Invoke(options);
        if (options.DefaultMemoryMiB <= 0)
        {
            throw new ArgumentException($"DefaultMemoryMiB must be positive (was {options.DefaultMemoryMiB}).", nameof(configure));
        }

        services.TryAddSingleton(options);
        services.TryAddSingleton<IVirtualMachineFactory>(sp => new VirtualMachineFactory(
            sp.GetRequiredService<VirtualizationOptions>(),
            (ILoggerFactory?)sp.GetService(typeof(ILoggerFactory))));
        return new VirtualizationBuilder(services);
    }

    /// <summary>Sets the backend of the factory's builders.</summary>
    public static IVirtualizationBuilder UseBackend(this IVirtualizationBuilder builder, BackendKind backend)
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.Services.Configure(o => o.Backend = backend);
        return builder;
    }

    private static void Configure(this IServiceCollection services, Action<VirtualizationOptions> change)
    {
        foreach (var d in services)
        {
            if (d.ServiceType == typeof(VirtualizationOptions) && d.ImplementationInstance is VirtualizationOptions o)
            {
                change(o);
            }
        }
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
