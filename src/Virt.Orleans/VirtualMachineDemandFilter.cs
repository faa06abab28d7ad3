using Orleans;
using Orleans.Runtime;

namespace Virt.Orleans;

/// <summary>
/// On the calling side of <see cref="IVirtualMachineGrain.CreateAsync"/>: puts the VM's size into the request context, so
/// the capacity placement of a new grain knows what the VM needs before the grain exists.
/// </summary>
internal sealed class VirtualMachineDemandFilter(Microsoft.Extensions.Options.IOptions<VirtualMachineGrainOptions>? options = null) : IOutgoingGrainCallFilter
{
    public async Task Invoke(IOutgoingGrainCallContext context)
    {
        if (context.Request.GetArgumentCount() > 0 && context.Request.GetArgument(0) is VirtualMachineSpec spec)
        {
            var demand = VirtualMachineDemand.FromSpec(spec, options?.Value.DefaultVmMemoryMiB ?? 64);
            RequestContext.Set(VirtualMachineDemand.RequestContextKey, demand.Encode());
            try
            {
                await context.Invoke().ConfigureAwait(false);
            }
            finally
            {
                RequestContext.Remove(VirtualMachineDemand.RequestContextKey);
            }
        }
        else
        {
            await context.Invoke().ConfigureAwait(false);
        }
    }
}
