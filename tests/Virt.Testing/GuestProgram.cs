using Iced.Intel;

namespace Virt.Testing;

/// <summary>Assembles guest code with Iced's <see cref="Assembler"/>.</summary>
public static class GuestProgram
{
    /// <summary>Assembles the instructions <paramref name="emit"/> adds, for <paramref name="bitness"/> (16, 32 or 64) code placed at <paramref name="origin"/>.</summary>
    public static byte[] Assemble(int bitness, ulong origin, Action<Assembler> emit)
    {
        ArgumentNullException.ThrowIfNull(emit);
        var a = new Assembler(bitness);
        emit(a);
        var writer = new CodeWriterImpl();
        a.Assemble(writer, origin);
        return writer.ToArray();
    }

    private sealed class CodeWriterImpl : CodeWriter
    {
        private readonly List<byte> _bytes = [];

        public override void WriteByte(byte value) => _bytes.Add(value);

        public byte[] ToArray() => [.. _bytes];
    }
}
