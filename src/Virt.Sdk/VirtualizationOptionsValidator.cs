using Microsoft.Extensions.Options;
using Virt;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Checks <see cref="VirtualizationOptions"/> when the host starts; each failure names the setting and what to change.</summary>
internal sealed class VirtualizationOptionsValidator : IValidateOptions<VirtualizationOptions>
{
    public ValidateOptionsResult Validate(string? name, VirtualizationOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var failures = new List<string>();
        if (!Enum.IsDefined(options.Backend))
        {
            failures.Add($"{VirtualizationOptions.SectionName}:Backend is {(int)options.Backend}, which is no backend; use Auto, Kvm, Whp or Interpreter.");
        }

        if (options.DefaultMemoryMiB <= 0)
        {
            failures.Add($"{VirtualizationOptions.SectionName}:DefaultMemoryMiB is {options.DefaultMemoryMiB}; give a positive number of MiB, e.g. 64.");
        }

        if (options.DefaultVcpuCount is <= 0 or > VirtualMachineBuilder.MaxVcpuCount)
        {
            failures.Add($"{VirtualizationOptions.SectionName}:DefaultVcpuCount is {options.DefaultVcpuCount}; give 1 to {VirtualMachineBuilder.MaxVcpuCount}.");
        }

        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }
}
