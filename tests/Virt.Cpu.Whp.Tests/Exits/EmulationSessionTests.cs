using Virt.Cpu;
using Virt.Cpu.Whp;
using Virt.Memory;
using Xunit;

namespace Virt.Cpu.Whp.Tests.Exits;

/// <summary>
/// The two-pass emulation protocol, played the way the WHP emulator calls back: a write completes in the
/// first pass, a read is deferred to the host and answered in the replay.
/// </summary>
public sealed unsafe class EmulationSessionTests : IDisposable
{
    private const byte Read = 0;
    private const byte Write = 1;
    private static readonly WHV_EMULATOR_STATUS Success = new() { AsUINT32 = WHV_EMULATOR_STATUS.EmulationSuccessful };
    private static readonly WHV_EMULATOR_STATUS IoCallbackFailed = new() { AsUINT32 = WHV_EMULATOR_STATUS.IoPortCallbackFailed };
    private static readonly WHV_EMULATOR_STATUS MemoryCallbackFailed = new() { AsUINT32 = WHV_EMULATOR_STATUS.MemoryCallbackFailed };

    private readonly GuestMemory _memory = GuestMemory.Create(
        GuestMemoryRegionSpec.Ram(GuestAddress.Zero, 0x10000),
        GuestMemoryRegionSpec.Rom(new GuestAddress(0xF0000), 0x1000));

    private readonly EmulationSession _session;

    public EmulationSessionTests() => _session = new EmulationSession(_memory);

    public void Dispose() => _memory.Dispose();

    private static WHV_RUN_VP_EXIT_CONTEXT IoExit()
    {
        var e = default(WHV_RUN_VP_EXIT_CONTEXT);
        e.ExitReason = WhvRunVpExitReason.X64IoPortAccess;
        e.VpContext.Rip = 0x1000;
        e.IoPortAccess.InstructionByteCount = 1;
        e.IoPortAccess.InstructionBytes[0] = 0xEC;
        return e;
    }

    private static WHV_RUN_VP_EXIT_CONTEXT MemoryExit() => default(WHV_RUN_VP_EXIT_CONTEXT) with { ExitReason = WhvRunVpExitReason.MemoryAccess };

    private int Port(byte direction, ushort port, ushort size, uint data = 0) => Port(direction, port, size, ref data);

    private int Port(byte direction, ushort port, ushort size, ref uint data)
    {
        var io = new WHV_EMULATOR_IO_ACCESS_INFO { Direction = direction, Port = port, AccessSize = size, Data = data };
        int hr = _session.IoPort(ref io);
        data = io.Data;
        return hr;
    }

    private int Mem(byte direction, ulong gpa, byte size, Span<byte> data)
    {
        var m = new WHV_EMULATOR_MEMORY_ACCESS_INFO { GpaAddress = gpa, Direction = direction, AccessSize = size };
        for (int i = 0; i < data.Length && i < 8; i++)
        {
            m.Data[i] = data[i];
        }

        int hr = _session.Memory(ref m);
        for (int i = 0; i < data.Length && i < 8; i++)
        {
            data[i] = m.Data[i];
        }

        return hr;
    }

    [Fact]
    public void Out_completes_in_the_first_pass_and_reports_the_data()
    {
        _session.Begin(replay: false);
        Assert.Equal(HResult.S_OK, Port(Write, 0x3F8, 1, 0xFFFF_FF41));
        var exit = _session.Finish(HResult.S_OK, Success, IoExit());

        Assert.NotNull(exit);
        Assert.Equal(VcpuExitReason.PortIo, exit.Value.Reason);
        Assert.True(exit.Value.IsWrite);
        Assert.Equal((ushort)0x3F8, exit.Value.Port);
        Assert.Equal((1, 1), (exit.Value.Size, exit.Value.Count));
        Assert.Equal([0x41], _session.ExitData.ToArray());
        Assert.False(_session.HasPendingRead);
    }

    [Fact]
    public void In_is_deferred_to_the_host_then_answered_from_exit_data_in_the_replay()
    {
        _session.Begin(replay: false);
        int hr = Port(Read, 0x60, 2);
        Assert.True(hr < 0, "the first pass must stop the emulator before the instruction retires");
        var exit = _session.Finish(HResult.S_OK, IoCallbackFailed, IoExit());

        Assert.Equal(VcpuExitReason.PortIo, exit!.Value.Reason);
        Assert.False(exit.Value.IsWrite);
        Assert.Equal((ushort)0x60, exit.Value.Port);
        Assert.Equal(2, exit.Value.Size);
        Assert.Equal([0, 0], _session.ExitData.ToArray());
        Assert.True(_session.HasPendingRead);

        _session.ExitData[0] = 0x34;
        _session.ExitData[1] = 0x12;
        _session.Begin(replay: true);
        uint data = 0xFFFF_FFFF;
        Assert.Equal(HResult.S_OK, Port(Read, 0x60, 2, ref data));
        Assert.Equal(0x1234u, data);
        Assert.Null(_session.Finish(HResult.S_OK, Success, IoExit()));
        Assert.False(_session.HasPendingRead);
    }

    [Fact]
    public void Rep_outs_reports_every_element_in_one_exit()
    {
        _session.Begin(replay: false);
        Assert.Equal(HResult.S_OK, Port(Write, 0x1F0, 2, 0x1111));
        Assert.Equal(HResult.S_OK, Port(Write, 0x1F0, 2, 0x2222));
        Assert.Equal(HResult.S_OK, Port(Write, 0x1F0, 2, 0x3333));
        var exit = _session.Finish(HResult.S_OK, Success, IoExit())!.Value;
        Assert.Equal((2, 3, 6), (exit.Size, exit.Count, exit.DataLength));
        Assert.Equal([0x11, 0x11, 0x22, 0x22, 0x33, 0x33], _session.ExitData.ToArray());
    }

    [Fact]
    public void Rep_outs_longer_than_the_exit_buffer_fails_the_emulation_instead_of_overflowing()
    {
        _session.Begin(replay: false);
        int hr = 0;
        for (int i = 0; i <= EmulationSession.ExitDataCapacity / 4 && hr >= 0; i++)
        {
            hr = Port(Write, 0x80, 4, (uint)i);
        }

        Assert.True(hr < 0);
        var exit = _session.Finish(HResult.S_OK, IoCallbackFailed, IoExit())!.Value;
        Assert.Equal(VcpuExitReason.InternalError, exit.Reason);
        Assert.Equal(0, _session.ExitData.Length);
    }

    [Fact]
    public void Writes_to_two_ports_in_one_instruction_are_refused()
    {
        _session.Begin(replay: false);
        Assert.Equal(HResult.S_OK, Port(Write, 0x80, 1, 1));
        Assert.True(Port(Write, 0x81, 1, 1) < 0);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(3)]
    [InlineData(8)]
    public void Port_access_of_an_impossible_size_is_refused(ushort size)
    {
        _session.Begin(replay: false);
        Assert.Equal(HResult.E_INVALIDARG, Port(Write, 0x80, size, 0));
    }

    [Fact]
    public void Mmio_store_to_a_hole_completes_and_reports_address_size_and_data()
    {
        _session.Begin(replay: false);
        Assert.Equal(HResult.S_OK, Mem(Write, 0xD000_0000, 4, [0x88, 0x77, 0x66, 0x55]));
        var exit = _session.Finish(HResult.S_OK, Success, MemoryExit())!.Value;
        Assert.Equal(VcpuExitReason.Mmio, exit.Reason);
        Assert.True(exit.IsWrite);
        Assert.Equal((new GuestAddress(0xD000_0000), 4), (exit.Address, exit.Size));
        Assert.Equal([0x88, 0x77, 0x66, 0x55], _session.ExitData.ToArray());
    }

    [Fact]
    public void Store_to_rom_is_an_mmio_write_and_leaves_the_rom_unchanged()
    {
        _memory.LoadRom(new GuestAddress(0xF0000), [0xAA]);
        _session.Begin(replay: false);
        Assert.Equal(HResult.S_OK, Mem(Write, 0xF0000, 1, [0x55]));
        var exit = _session.Finish(HResult.S_OK, Success, MemoryExit())!.Value;
        Assert.Equal((VcpuExitReason.Mmio, true), (exit.Reason, exit.IsWrite));
        Assert.Equal(0xAA, _memory.Read<byte>(new GuestAddress(0xF0000)));
    }

    [Fact]
    public void Ram_accesses_of_the_emulator_go_to_guest_memory_without_an_exit()
    {
        _memory.Write(new GuestAddress(0x2000), 0x0102_0304_0506_0708UL);
        _session.Begin(replay: false);
        Span<byte> data = stackalloc byte[8];
        Assert.Equal(HResult.S_OK, Mem(Read, 0x2000, 8, data));
        Assert.Equal(0x0102_0304_0506_0708UL, BitConverter.ToUInt64(data));
        Assert.Equal(HResult.S_OK, Mem(Write, 0x3000, 2, [0xEF, 0xBE]));
        Assert.Null(_session.Finish(HResult.S_OK, Success, MemoryExit()));
        Assert.Equal(0xBEEF, _memory.Read<ushort>(new GuestAddress(0x3000)));
    }

    [Fact]
    public void Mmio_load_is_deferred_then_answered_in_the_replay()
    {
        _session.Begin(replay: false);
        Span<byte> data = stackalloc byte[4];
        Assert.Equal(HResult.E_PENDING, Mem(Read, 0xD000_0004, 4, data));
        var exit = _session.Finish(HResult.S_OK, MemoryCallbackFailed, MemoryExit())!.Value;
        Assert.Equal((VcpuExitReason.Mmio, false, 4), (exit.Reason, exit.IsWrite, exit.Size));
        Assert.Equal(new GuestAddress(0xD000_0004), exit.Address);

        new byte[] { 0xBE, 0xBA, 0xFE, 0xCA }.CopyTo(_session.ExitData);
        _session.Begin(replay: true);
        Assert.Equal(HResult.S_OK, Mem(Read, 0xD000_0004, 4, data));
        Assert.Equal(0xCAFE_BABEu, BitConverter.ToUInt32(data));
        Assert.Null(_session.Finish(HResult.S_OK, Success, MemoryExit()));
    }

    [Fact]
    public void Replay_that_asks_for_a_different_read_returns_another_read_exit()
    {
        _session.Begin(replay: false);
        Span<byte> data = stackalloc byte[4];
        _ = Mem(Read, 0xD000_0000, 4, data);
        _ = _session.Finish(HResult.S_OK, MemoryCallbackFailed, MemoryExit());

        _session.Begin(replay: true);
        Assert.Equal(HResult.S_OK, Mem(Read, 0xD000_0000, 4, data));
        Assert.Equal(HResult.E_PENDING, Mem(Read, 0xD000_0008, 4, data));
        var exit = _session.Finish(HResult.S_OK, MemoryCallbackFailed, MemoryExit())!.Value;
        Assert.Equal(new GuestAddress(0xD000_0008), exit.Address);
        Assert.True(_session.HasPendingRead);
    }

    [Fact]
    public void Second_mmio_write_in_one_instruction_is_refused()
    {
        _session.Begin(replay: false);
        Assert.Equal(HResult.S_OK, Mem(Write, 0xD000_0000, 4, [1, 2, 3, 4]));
        Assert.True(Mem(Write, 0xD000_1000, 4, [1, 2, 3, 4]) < 0);
    }

    [Theory]
    [InlineData((byte)0)]
    [InlineData((byte)9)]
    [InlineData((byte)255)]
    public void Memory_access_of_an_impossible_size_is_refused(byte size)
    {
        _session.Begin(replay: false);
        Assert.Equal(HResult.E_INVALIDARG, Mem(Read, 0x1000, size, stackalloc byte[8]));
    }

    [Fact]
    public void Access_at_the_top_of_the_address_space_is_mmio_not_a_host_fault()
    {
        _session.Begin(replay: false);
        Assert.Equal(HResult.E_PENDING, Mem(Read, ulong.MaxValue - 3, 8, stackalloc byte[8]));
        Assert.Equal(VcpuExitReason.Mmio, _session.Finish(HResult.S_OK, MemoryCallbackFailed, MemoryExit())!.Value.Reason);
    }

    [Fact]
    public void Failed_emulation_is_an_internal_error_with_status_rip_and_instruction_bytes()
    {
        _session.Begin(replay: false);
        var exit = _session.Finish(HResult.S_OK, new WHV_EMULATOR_STATUS { AsUINT32 = WHV_EMULATOR_STATUS.InternalEmulationFailure }, IoExit())!.Value;
        Assert.Equal(VcpuExitReason.InternalError, exit.Reason);
        Assert.Equal((ulong)WHV_EMULATOR_STATUS.InternalEmulationFailure, exit.Fault!.Code);
        Assert.Equal(0x1000UL, exit.Fault.Rip);
        Assert.Equal([0xEC], exit.Fault.InstructionBytes.ToArray());
        Assert.Contains("I/O port", exit.Fault.Description, StringComparison.Ordinal);
    }

    [Fact]
    public void Deferred_read_is_reported_even_when_the_emulator_returns_the_callbacks_failure()
    {
        _session.Begin(replay: false);
        _ = Port(Read, 0x64, 1);
        var exit = _session.Finish(HResult.E_PENDING, IoCallbackFailed, IoExit())!.Value;
        Assert.Equal((VcpuExitReason.PortIo, false, (ushort)0x64), (exit.Reason, exit.IsWrite, exit.Port));
    }

    [Fact]
    public void Failed_hresult_from_the_emulator_stops_the_guest_instead_of_throwing()
    {
        _session.Begin(replay: false);
        var exit = _session.Finish(HResult.E_FAIL, default, IoExit())!.Value;
        Assert.Equal(VcpuExitReason.InternalError, exit.Reason);
        Assert.Contains("0x80004005", exit.Fault!.Description, StringComparison.Ordinal);
    }

    [Fact]
    public void Emulation_that_needed_nothing_from_the_host_returns_no_exit()
    {
        _session.Begin(replay: false);
        Assert.Null(_session.Finish(HResult.S_OK, Success, IoExit()));
        Assert.Equal(0, _session.ExitData.Length);
    }
}
