using System.Text;
using Virt.Devices.Virtio;
using Xunit;
using P = Virt.Devices.Virtio.VsockProtocol;

namespace Virt.Devices.Tests.Virtio.Vsock;

/// <summary>The virtio-vsock device against a scripted driver: connections both ways, credit, shutdown, refusals.</summary>
public sealed class VirtioVsockDeviceTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public void Device_presents_type_19_three_queues_and_the_guest_cid()
    {
        using var rig = new VsockRig();
        Assert.Equal(19u, rig.Driver.ReadRegister(0x008));
        Assert.Equal(3, rig.Driver.Queues.Count);
        Assert.Equal(VsockRig.GuestCid, rig.Driver.ReadRegister(0x100));
        Assert.Equal(0u, rig.Driver.ReadRegister(0x104));
        Assert.Throws<ArgumentOutOfRangeException>(() => new VirtioVsockDevice(2));
    }

    [Fact]
    public async Task Guest_connects_to_a_host_listener_and_bytes_flow_both_ways()
    {
        using var rig = new VsockRig();
        using var listener = rig.Device.Listen(5000);
        rig.PostReceiveBuffers(8);

        rig.Send(P.OpRequest, srcPort: 1234, dstPort: 5000);
        var response = rig.Receive().Header;
        Assert.Equal(P.OpResponse, response.Op);
        Assert.Equal((2ul, 5000u, VsockRig.GuestCid, 1234u), (response.SourceCid, response.SourcePort, response.DestinationCid, response.DestinationPort));
        Assert.Equal(VsockMultiplexer.BufferAllocation, response.BufferAllocation);

        await using var stream = await listener.AcceptAsync(Ct);
        Assert.Equal(1234u, stream.RemotePort);
        rig.Send(P.OpRw, 1234, 5000, "hello host"u8);
        byte[] got = new byte[10];
        await stream.ReadExactlyAsync(got, Ct);
        Assert.Equal("hello host", Encoding.ASCII.GetString(got));

        await stream.WriteAsync("hello guest"u8.ToArray(), Ct);
        var (header, payload) = rig.Receive();
        Assert.Equal(P.OpRw, header.Op);
        Assert.Equal("hello guest", Encoding.ASCII.GetString(payload));
        Assert.Equal(10u, header.ForwardCount);
    }

    [Fact]
    public void Request_to_a_port_without_listener_is_answered_with_rst()
    {
        using var rig = new VsockRig();
        rig.PostReceiveBuffers(2);
        rig.Send(P.OpRequest, 1234, 6000);
        var rst = rig.Receive().Header;
        Assert.Equal(P.OpRst, rst.Op);
        Assert.Equal((6000u, 1234u), (rst.SourcePort, rst.DestinationPort));
        Assert.Equal(0, rig.Device.ConnectionCount);
        Assert.False(rig.NeedsReset);
    }

    [Fact]
    public async Task Host_connect_completes_on_response_and_fails_on_rst()
    {
        using var rig = new VsockRig();
        rig.PostReceiveBuffers(4);
        var connecting = rig.Device.ConnectAsync(80, Ct);
        var request = rig.Receive().Header;
        Assert.Equal(P.OpRequest, request.Op);
        Assert.Equal(80u, request.DestinationPort);
        rig.Send(P.OpResponse, 80, request.SourcePort);
        await using var stream = await connecting;
        Assert.Equal(request.SourcePort, stream.LocalPort);

        var refused = rig.Device.ConnectAsync(81, Ct);
        var second = rig.Receive().Header;
        rig.Send(P.OpRst, 81, second.SourcePort);
        var e = await Assert.ThrowsAsync<IOException>(() => refused);
        Assert.Contains("no program listens", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Host_writes_stop_at_the_guest_credit_and_resume_on_credit_update()
    {
        using var rig = new VsockRig();
        rig.PostReceiveBuffers(8);
        var connecting = rig.Device.ConnectAsync(90, Ct);
        var request = rig.Receive().Header;
        rig.Send(P.OpResponse, 90, request.SourcePort, bufAlloc: 100);
        await using var stream = await connecting;

        await stream.WriteAsync(new byte[250], Ct);
        var first = rig.Receive();
        Assert.Equal(P.OpRw, first.Header.Op);
        Assert.Equal(100, first.Payload.Length);
        var ask = rig.Receive().Header;
        Assert.Equal(P.OpCreditRequest, ask.Op);
        Assert.False(rig.TryReceive(out _), "nothing beyond the credit goes out");

        rig.Send(P.OpCreditUpdate, 90, request.SourcePort, bufAlloc: 100, fwdCnt: 100);
        Assert.Equal(100, ReceiveData(rig).Length);
        rig.Send(P.OpCreditUpdate, 90, request.SourcePort, bufAlloc: 100, fwdCnt: 200);
        Assert.Equal(50, ReceiveData(rig).Length);
        await stream.FlushAsync(Ct);
    }

    [Fact]
    public async Task Guest_credit_overrun_resets_the_connection_with_a_logged_reason()
    {
        using var rig = new VsockRig();
        using var listener = rig.Device.Listen(5000);
        rig.PostReceiveBuffers(4);
        rig.Send(P.OpRequest, 1234, 5000);
        Assert.Equal(P.OpResponse, rig.Receive().Header.Op);
        await using var stream = await listener.AcceptAsync(Ct);

        byte[] chunk = new byte[P.MaxPayload];
        for (int i = 0; i < 4; i++)
        {
            rig.Send(P.OpRw, 1234, 5000, chunk);
        }

        rig.Send(P.OpRw, 1234, 5000, chunk);
        Assert.Equal(P.OpRst, rig.Receive().Header.Op);
        Assert.True(rig.Logged("overran its credit"));
        Assert.False(rig.NeedsReset);

        // What arrived within the credit is still readable; then the reset shows.
        byte[] all = new byte[4 * P.MaxPayload];
        await stream.ReadExactlyAsync(all, Ct);
        await Assert.ThrowsAsync<IOException>(async () => await stream.ReadExactlyAsync(new byte[1], Ct));
    }

    [Fact]
    public async Task Host_reading_returns_credit_to_the_guest()
    {
        using var rig = new VsockRig();
        using var listener = rig.Device.Listen(5000);
        rig.PostReceiveBuffers(4);
        rig.Send(P.OpRequest, 1234, 5000);
        rig.Receive();
        await using var stream = await listener.AcceptAsync(Ct);
        byte[] chunk = new byte[P.MaxPayload];
        for (int i = 0; i < 3; i++)
        {
            rig.Send(P.OpRw, 1234, 5000, chunk);
        }

        await stream.ReadExactlyAsync(new byte[3 * P.MaxPayload], Ct);
        var update = rig.Receive().Header;
        Assert.Equal(P.OpCreditUpdate, update.Op);
        Assert.Equal((uint)(3 * P.MaxPayload), update.ForwardCount);
    }

    [Fact]
    public async Task Guest_shutdown_ends_the_host_stream_after_the_data_and_is_answered_with_rst()
    {
        using var rig = new VsockRig();
        using var listener = rig.Device.Listen(5000);
        rig.PostReceiveBuffers(4);
        rig.Send(P.OpRequest, 1234, 5000);
        rig.Receive();
        await using var stream = await listener.AcceptAsync(Ct);
        rig.Send(P.OpRw, 1234, 5000, "last words"u8);
        rig.Send(P.OpShutdown, 1234, 5000, flags: P.ShutdownBoth);
        Assert.Equal(P.OpRst, rig.Receive().Header.Op);

        using var text = new MemoryStream();
        await stream.CopyToAsync(text, Ct);
        Assert.Equal("last words", Encoding.ASCII.GetString(text.ToArray()));
        await Assert.ThrowsAsync<IOException>(async () => await stream.WriteAsync(new byte[1], Ct));
        Assert.Equal(0, rig.Device.ConnectionCount);
    }

    [Fact]
    public async Task Host_close_sends_the_data_then_shutdown_and_the_guest_rst_ends_it()
    {
        using var rig = new VsockRig();
        using var listener = rig.Device.Listen(5000);
        rig.PostReceiveBuffers(4);
        rig.Send(P.OpRequest, 1234, 5000);
        rig.Receive();
        var stream = await listener.AcceptAsync(Ct);
        await stream.WriteAsync("bye"u8.ToArray(), Ct);
        await stream.DisposeAsync();
        Assert.Equal("bye", Encoding.ASCII.GetString(rig.Receive().Payload));
        var shutdown = rig.Receive().Header;
        Assert.Equal((P.OpShutdown, P.ShutdownBoth), (shutdown.Op, shutdown.Flags));
        rig.Send(P.OpRst, 1234, 5000);
        Assert.Equal(0, rig.Device.ConnectionCount);
    }

    [Fact]
    public void Hostile_packets_are_refused_with_reasons_and_the_device_keeps_running()
    {
        using var rig = new VsockRig();
        using var listener = rig.Device.Listen(5000);
        rig.PostReceiveBuffers(8);

        rig.Send(P.OpRequest, 1, 5000, srcCid: 99);
        rig.Send(P.OpRequest, 1, 5000, dstCid: 7);
        rig.SendRaw(new byte[20], default);
        rig.Send(P.OpRw, 1, 5000, "abc"u8, length: 4000);
        Assert.False(rig.TryReceive(out _), "spoofed or malformed packets get no answer");
        Assert.True(rig.Logged("source CID 99 is not the guest's CID 3"));
        Assert.True(rig.Logged("destination CID 7 is not the host"));
        Assert.True(rig.Logged("shorter than the 44-byte header"));
        Assert.True(rig.Logged("payload length 4000 does not fit"));

        rig.Send(42, 1, 5000);
        Assert.Equal(P.OpRst, rig.Receive().Header.Op);
        Assert.True(rig.Logged("unknown op 42"));
        rig.Send(P.OpRequest, 2, 5000, type: 2);
        Assert.Equal(P.OpRst, rig.Receive().Header.Op);
        Assert.True(rig.Logged("socket type 2 is not a stream"));
        rig.Send(P.OpRw, 3, 5000, "x"u8);
        Assert.Equal(P.OpRst, rig.Receive().Header.Op);
        Assert.True(rig.Logged("has no connection"));

        // Still serving.
        rig.Send(P.OpRequest, 4, 5000);
        Assert.Equal(P.OpResponse, rig.Receive().Header.Op);
        Assert.False(rig.NeedsReset);
        Assert.True(rig.Memory.Violations == 0, rig.Memory.LastViolation);
    }

    [Fact]
    public async Task Many_connections_run_at_once_and_a_driver_reset_ends_them()
    {
        using var rig = new VsockRig();
        using var listener = rig.Device.Listen(5000);
        rig.PostReceiveBuffers(40);
        var streams = new List<VsockStream>();
        for (uint port = 100; port < 120; port++)
        {
            rig.Send(P.OpRequest, port, 5000);
            Assert.Equal(P.OpResponse, rig.Receive().Header.Op);
            streams.Add(await listener.AcceptAsync(Ct));
        }

        for (uint port = 100; port < 120; port++)
        {
            rig.Send(P.OpRw, port, 5000, Encoding.ASCII.GetBytes($"from {port}"));
        }

        foreach (var s in streams)
        {
            byte[] got = new byte[8];
            await s.ReadExactlyAsync(got, Ct);
            Assert.Equal($"from {s.RemotePort}", Encoding.ASCII.GetString(got));
        }

        Assert.Equal(20, rig.Device.ConnectionCount);
        rig.Driver.WriteRegister(0x70, 0);
        Assert.Equal(0, rig.Device.ConnectionCount);
        foreach (var s in streams)
        {
            await Assert.ThrowsAsync<IOException>(async () => await s.ReadExactlyAsync(new byte[1], Ct));
            await s.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_cancelled_read_and_connect_leave_the_device_usable()
    {
        using var rig = new VsockRig();
        using var listener = rig.Device.Listen(5000);
        using var cancel = new CancellationTokenSource();
        var accept = listener.AcceptAsync(cancel.Token).AsTask();
        var connect = rig.Device.ConnectAsync(77, cancel.Token);
        await cancel.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => accept);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => connect);
        Assert.Equal(0, rig.Device.ConnectionCount);
        Assert.Throws<InvalidOperationException>(() => rig.Device.Listen(5000));
    }

    /// <summary>The next RW payload, past the CREDIT_REQUESTs a stalled sender puts before it.</summary>
    private static byte[] ReceiveData(VsockRig rig)
    {
        while (true)
        {
            var (header, payload) = rig.Receive();
            if (header.Op == P.OpRw)
            {
                return payload;
            }

            Assert.Equal(P.OpCreditRequest, header.Op);
        }
    }
}
