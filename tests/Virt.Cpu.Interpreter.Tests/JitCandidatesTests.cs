using Virt.Cpu.Interpreter.Jit;

namespace Virt.Cpu.Interpreter.Tests;

/// <summary>The compiler's candidates: the hottest block is compiled first, and blocks that stop turning hot give way.</summary>
public sealed class JitCandidatesTests
{
    private static Block NewBlock(ulong lin) => new() { Lin = lin, Count = 1 };

    [Fact]
    public void The_block_that_reached_the_threshold_most_often_is_taken_first()
    {
        var candidates = new JitCandidates();
        var cold = NewBlock(0x1000);
        var hot = NewBlock(0x2000);
        var warm = NewBlock(0x3000);
        candidates.Offer(cold);
        candidates.Offer(hot);
        candidates.Offer(warm);
        candidates.Offer(hot);
        candidates.Offer(hot);
        candidates.Offer(warm);

        Assert.Equal(3, candidates.Count);
        Assert.True(candidates.TryTake(out var first));
        Assert.Same(hot, first);
        Assert.False(hot.Pending);
        Assert.True(candidates.TryTake(out var second));
        Assert.Same(warm, second);
        Assert.True(candidates.TryTake(out var third));
        Assert.Same(cold, third);
        Assert.False(candidates.TryTake(out _));
    }

    [Fact]
    public void A_full_set_gives_a_slot_to_a_new_block_only_in_place_of_one_that_did_not_turn_hot_again()
    {
        var candidates = new JitCandidates();
        var blocks = Enumerable.Range(0, JitCandidates.Capacity).Select(i => NewBlock(0x1000 * (ulong)(i + 1))).ToArray();
        foreach (var b in blocks)
        {
            candidates.Offer(b);
        }

        // Every candidate but the last turns hot again: the newcomer takes the last one's slot.
        foreach (var b in blocks[..^1])
        {
            candidates.Offer(b);
        }

        var newcomer = NewBlock(0x100000);
        candidates.Offer(newcomer);
        Assert.Equal(1, candidates.Dropped);
        Assert.False(blocks[^1].Pending);
        Assert.True(newcomer.Pending);

        // Now every candidate but the newcomer is hotter than a new block, and the newcomer was just offered: the next
        // block takes the newcomer's slot, and once that one is hot too, a further block is deferred.
        var second = NewBlock(0x200000);
        candidates.Offer(second);
        Assert.False(newcomer.Pending);
        candidates.Offer(second);
        var third = NewBlock(0x300000);
        candidates.Offer(third);
        Assert.False(third.Pending);
        Assert.Equal(1, candidates.Deferred);
        Assert.Equal(JitCandidates.Capacity, candidates.Count);
    }

    [Fact]
    public void Heat_fades_as_blocks_are_taken_so_a_block_hot_now_overtakes_one_hot_before()
    {
        var candidates = new JitCandidates();
        var before = NewBlock(0x1000);
        candidates.Offer(before);
        for (int i = 0; i < 7; i++)
        {
            candidates.Offer(before);
        }

        // Heat 8; taking HeatHalfLife other blocks halves it to 4.
        for (int i = 0; i < JitCandidates.HeatHalfLife; i++)
        {
            var other = NewBlock(0x10000 * (ulong)(i + 1));
            for (int k = 0; k < 9; k++)
            {
                candidates.Offer(other);
            }

            Assert.True(candidates.TryTake(out var taken));
            Assert.Same(other, taken);
        }

        Assert.Equal(4, before.Heat);
        var now = NewBlock(0x9000);
        for (int k = 0; k < 5; k++)
        {
            candidates.Offer(now);
        }

        Assert.True(candidates.TryTake(out var first));
        Assert.Same(now, first);
    }

    [Fact]
    public void Compiled_invalid_and_uncompilable_blocks_are_not_offered()
    {
        var candidates = new JitCandidates();
        var invalid = NewBlock(0x1000);
        invalid.Valid = false;
        var uncompilable = NewBlock(0x2000);
        uncompilable.Uncompilable = true;
        candidates.Offer(invalid);
        candidates.Offer(uncompilable);
        Assert.Equal(0, candidates.Count);
    }
}
