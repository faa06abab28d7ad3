using Virt.Devices;

namespace Virt;

public sealed partial class VirtualMachineBuilder
{
    /// <summary>
    /// Adds a device of your own: an <see cref="IPortIoDevice"/> and/or <see cref="IMmioDevice"/> that the VM's device
    /// manager places and, if it asks for one, gives an interrupt line. Ports, window and line it does not fix in
    /// <paramref name="resources"/> are chosen by the VM when it is built; <see cref="VirtualMachine.Devices"/> and
    /// <see cref="DeviceContext.Placement"/> say where the device went.
    /// </summary>
    /// <typeparam name="TDevice">The device's type.</typeparam>
    /// <param name="name">A name for the device, unique enough to recognize it in messages and <see cref="VirtualMachine.Devices"/>.</param>
    /// <param name="resources">
    /// What it needs: <see cref="DeviceResources.PortCount"/> ports (the device must then be an <see cref="IPortIoDevice"/>),
    /// an MMIO window of <see cref="DeviceResources.MmioSize"/> bytes (then an <see cref="IMmioDevice"/>), an interrupt line.
    /// </param>
    /// <param name="create">
    /// Creates the device for one VM when it is built (once per <see cref="Build"/>), with the resources it got and
    /// its <see cref="DeviceContext.InterruptLine"/>. The device sees offsets from the start of its port range and
    /// window, is called on vCPU threads, and must neither throw nor block. The VM does not dispose it: register what
    /// it should release through <see cref="DeviceContext.DisposeWithMachine"/>.
    /// </param>
    /// <example>
    /// <code>
    /// var builder = VirtualMachine.CreateBuilder()
    ///     .WithInterruptController()
    ///     .WithDevice("doorbell", new DeviceResources { Port = 0x510, PortCount = 2, Interrupt = true },
    ///         context => new Doorbell(context.InterruptLine));
    /// </code>
    /// </example>
    /// <remarks>
    /// With <see cref="DeviceResources.AcpiHardwareId"/> set, a Linux guest finds the device through ACPI.
    /// <see cref="Build"/> refuses a device whose fixed ports or window overlap another device, RAM or the interrupt
    /// controllers, whose fixed line is taken or does not exist, or for which no line, port range or window is left.
    /// </remarks>
    public VirtualMachineBuilder WithDevice<TDevice>(string name, DeviceResources resources, Func<DeviceContext, TDevice> create)
        where TDevice : class
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        ArgumentNullException.ThrowIfNull(resources);
        ArgumentNullException.ThrowIfNull(create);
        if (resources.AcpiHardwareId is { } id && !Virt.Boot.AcpiDevice.IsValidHardwareId(id))
        {
            throw new ArgumentException($"'{id}' is not an ACPI hardware ID: use four upper-case letters or digits and four hexadecimal digits (VIRT0001), or a PNP ID of three letters and four hexadecimal digits.", nameof(resources));
        }

        return AddDevice(new DeviceSpec(name, resources, create));
    }

    private VirtualMachineBuilder AddDevice(DeviceSpec spec) => new(_config with { Devices = _config.Devices.Add(spec) });
}
