using Virt.Memory;
using Virt.Sandbox.Loader;
using Virt.Sandbox.Machine;
using Virt.X86;
using Xunit;

namespace Virt.Sandbox.Tests;

/// <summary>
/// The host translates user pointers from its record of the mappings, the processor from the page tables; the
/// two must agree on every page, or the host would read or write memory the program cannot (or refuse what it can).
/// </summary>
public sealed class AddressSpaceTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Host_translation_agrees_with_a_walk_of_the_guest_page_tables(bool executableStack)
    {
        using var memory = GuestMemory.CreateRam(4 << 20);
        var image = ElfImage.Parse(TinyElf.Build(a => a.ret(), new byte[5000], bssBytes: 0x3000, execStack: executableStack));
        var space = AddressSpace.Build(memory, image, 64 * 1024, 64 * 1024);
        var paging = Supervisor.Paging(space.Cr3);

        var (imageStart, imageEnd) = image.Extent;
        int pages = 0;
        foreach (var (start, end) in new[]
        {
            (imageStart - (4 * GuestLayout.PageSize), imageEnd + (4 * GuestLayout.PageSize)),
            (GuestLayout.ArenaBase - GuestLayout.PageSize, space.StackTop + GuestLayout.PageSize),
            (GuestLayout.SupervisorBase, GuestLayout.SupervisorBase + GuestLayout.PageTablePhysical),
        })
        {
            for (ulong va = start; va < end; va += GuestLayout.PageSize, pages++)
            {
                foreach (bool write in new[] { false, true })
                {
                    var walk = PageWalker.Walk(memory, paging, va + 8, PageAccess.User | (write ? PageAccess.Write : PageAccess.Read));
                    bool host = space.TryTranslate(va + 8, write, out ulong physical, out ulong contiguous);
                    Assert.True(walk.Succeeded == host, $"0x{va:x} {(write ? "write" : "read")}: walk {walk.Status}, host {host}");
                    if (host)
                    {
                        Assert.Equal(walk.PhysicalAddress, physical);
                        Assert.True(contiguous >= walk.BytesToPageEnd);
                    }
                }

                var flags = space.FlagsAt(va);
                var fetch = PageWalker.Walk(memory, paging, va, PageAccess.User | PageAccess.Execute);
                if ((flags & PageFlags.Present) != 0)
                {
                    Assert.Equal((flags & PageFlags.NoExecute) == 0, fetch.Succeeded);
                }
            }
        }

        Assert.True(pages > 900, $"only {pages} pages compared");
    }

    [Fact]
    public void The_trampoline_and_doorbell_pages_are_user_pages_the_host_never_translates()
    {
        // The program reaches them only through SYSCALL; a pointer into them is refused (EFAULT), which is stricter than the MMU.
        using var memory = GuestMemory.CreateRam(4 << 20);
        var space = AddressSpace.Build(memory, ElfImage.Parse(TinyElf.Build(a => a.ret())), 64 * 1024, 64 * 1024);
        var paging = Supervisor.Paging(space.Cr3);
        foreach (ulong va in new[] { GuestLayout.TrampolineAddress, GuestLayout.DoorbellAddress })
        {
            Assert.True(PageWalker.Walk(memory, paging, va, PageAccess.User).Succeeded);
            Assert.False(space.TryTranslate(va, write: false, out _, out _));
            Assert.False(PageWalker.Walk(memory, paging, va, PageAccess.User | PageAccess.Write).Succeeded);
        }

        Assert.Equal(GuestLayout.DoorbellPhysical, PageWalker.Walk(memory, paging, GuestLayout.DoorbellAddress, PageAccess.User).PhysicalAddress);
    }
}
