using System.Buffers.Binary;
using Xunit;

namespace Virt.Network.Tests;

public sealed class PcapCaptureTests
{
    [Fact]
    public async Task Capture_writes_a_libpcap_file_with_frames_in_both_directions()
    {
        string path = Path.Combine(Path.GetTempPath(), $"virt-{Guid.NewGuid():N}.pcap");
        try
        {
            var inner = new LoopBackend();
            var a = MacAddress.Parse("02:00:00:00:00:01");
            var b = MacAddress.Parse("02:00:00:00:00:02");
            var capture = new PcapCapture(inner, path, new ManualTimeProvider());
            capture.Attach(_ => true);
            var outbound = NetRig.Frame(b, a, payload: 60);
            var inbound = NetRig.Frame(a, b, payload: 80);
            await capture.SendAsync(outbound, TestContext.Current.CancellationToken);
            Assert.True(inner.Inject(inbound));
            await capture.DisposeAsync();

            byte[] file = await File.ReadAllBytesAsync(path, TestContext.Current.CancellationToken);
            Assert.Equal(0xa1b2c3d4u, BinaryPrimitives.ReadUInt32LittleEndian(file));
            Assert.Equal(2, BinaryPrimitives.ReadUInt16LittleEndian(file.AsSpan(4)));
            Assert.Equal(4, BinaryPrimitives.ReadUInt16LittleEndian(file.AsSpan(6)));
            Assert.Equal(1u, BinaryPrimitives.ReadUInt32LittleEndian(file.AsSpan(20)));
            int at = 24;
            foreach (var expected in new[] { outbound, inbound })
            {
                Assert.Equal((uint)expected.Length, BinaryPrimitives.ReadUInt32LittleEndian(file.AsSpan(at + 8)));
                Assert.Equal((uint)expected.Length, BinaryPrimitives.ReadUInt32LittleEndian(file.AsSpan(at + 12)));
                Assert.Equal(expected, file.AsSpan(at + 16, expected.Length).ToArray());
                at += 16 + expected.Length;
            }

            Assert.Equal(file.Length, at);
        }
        finally
        {
            File.Delete(path);
        }
    }
}
