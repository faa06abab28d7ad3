using System.Numerics;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>
/// DIV and IDIV as both tiers compute them (<see cref="InterpreterVcpu.Divide"/>), against the architecture's definition
/// worked out with arbitrary-precision integers: the quotient truncated toward zero, the remainder with the dividend's sign,
/// #DE for a divisor of 0 or a quotient that does not fit the destination.
/// </summary>
public sealed class DivideTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(4)]
    [InlineData(8)]
    public void Every_size_and_sign_matches_the_definition_for_random_and_edge_operands(int size)
    {
        var random = new Random(20261205 + size);
        ulong mask = size == 8 ? ulong.MaxValue : (1UL << (size * 8)) - 1;
        ulong[] edges = [0, 1, 2, 3, mask, mask - 1, mask >> 1, (mask >> 1) + 1, (mask >> 1) - 1];
        for (int i = 0; i < 200_000; i++)
        {
            ulong Pick() => random.Next(4) switch
            {
                0 => edges[random.Next(edges.Length)],
                1 => (ulong)random.NextInt64() & (mask >> random.Next(size * 8)),
                _ => ((ulong)random.NextInt64() ^ ((ulong)random.Next() << 40)) & mask,
            };

            ulong lo = Pick();
            ulong src = Pick();

            // The high half: zero, the low half's sign extension (the common forms, which take the host's division),
            // or anything.
            ulong hi = random.Next(3) switch
            {
                0 => 0,
                1 => (lo & ((mask >> 1) + 1)) != 0 ? mask : 0,
                _ => Pick(),
            };
            if (size == 1)
            {
                // Bytes divide AX: the dividend is 16 bits in lo.
                lo = (lo & 0xFF) | ((hi & 0xFF) << 8);
                hi = 0;
            }

            foreach (bool signed in (bool[])[false, true])
            {
                bool ok = InterpreterVcpu.Divide(lo, hi, src, size, signed, out ulong q, out ulong r);
                var expected = Reference(lo, hi, src, size, signed);
                Assert.True(expected.HasValue == ok, $"size {size} signed {signed}: {hi:x}:{lo:x} / {src:x} faulted {!ok}, expected {!expected.HasValue}");
                if (ok)
                {
                    Assert.Equal((expected!.Value.Q, expected.Value.R), (q, r));
                }
            }
        }
    }

    private static (ulong Q, ulong R)? Reference(ulong lo, ulong hi, ulong src, int size, bool signed)
    {
        int bits = size * 8;
        BigInteger mod = BigInteger.One << bits;
        BigInteger dividend = size == 1 ? new BigInteger(lo & 0xFFFF) : (new BigInteger(hi) << bits) | new BigInteger(lo);
        BigInteger divisor = new(src);
        if (signed)
        {
            int dividendBits = bits * 2;
            if (dividend >= BigInteger.One << (dividendBits - 1))
            {
                dividend -= BigInteger.One << dividendBits;
            }

            if (divisor >= BigInteger.One << (bits - 1))
            {
                divisor -= mod;
            }
        }

        if (divisor.IsZero)
        {
            return null;
        }

        BigInteger q = BigInteger.DivRem(dividend, divisor, out BigInteger r);
        BigInteger min = signed ? -(BigInteger.One << (bits - 1)) : BigInteger.Zero;
        BigInteger max = signed ? (BigInteger.One << (bits - 1)) - 1 : mod - 1;
        if (q < min || q > max)
        {
            return null;
        }

        static ulong Wrap(BigInteger v, BigInteger mod) => (ulong)(((v % mod) + mod) % mod);
        return (Wrap(q, mod), Wrap(r, mod));
    }
}
