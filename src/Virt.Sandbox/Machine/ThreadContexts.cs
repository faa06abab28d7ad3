using System.Runtime.InteropServices;
using Virt.Cpu;
using Virt.Memory;
using Virt.Sandbox.Linux;
using Virt.X86;

namespace Virt.Sandbox.Machine;

/// <summary>
/// Threads on the one vCPU: the ABI layer's cooperative scheduler decides which thread runs; this class saves the
/// user context of the thread that gives the vCPU up and loads the next one's. A thread only ever leaves the vCPU in a
/// system call, so its RCX and R11 hold what SYSCALL put there and no live value is lost.
/// </summary>
/// <remarks>
/// Processes: a fork's child gets a copy of the caller's memory (<see cref="ProcessMemory"/>); a switch to a thread of
/// another process swaps the memory contents; execve reloads the executable and builds a new initial stack.
/// </remarks>
internal sealed class ThreadContexts(IVirtualCpu vcpu, GuestMemory memory, LinuxAbi abi, Action<ulong> setFsBase, ProcessMemory processes, ThreadContexts.StartImage startImage)
{
    /// <summary>Builds the initial stack of a fresh image for <c>execve</c>: returns the entry point, the stack pointer and the initial XSAVE image.</summary>
    public delegate (ulong Entry, ulong Rsp, XsaveState Xsave) StartImage(IReadOnlyList<string> arguments, IReadOnlyList<string> environment, string path);

    /// <summary>Where a resume through a stub's <c>iretq</c> puts its five-word frame: the top of the exception stack.</summary>
    public const ulong ResumeFrame = GuestLayout.ExceptionStackTop - 40;

    /// <summary>A thread's user-mode state while it is off the vCPU: general registers (RIP, RSP, RFLAGS as the program sees them) and the XSAVE image.</summary>
    private sealed record UserContext(GeneralRegisters Registers, XsaveState Xsave);

    /// <summary>Whether the last call made a thread or handed the vCPU to another one.</summary>
    public bool Pending => abi.PendingSwitch is not null || abi.PendingClone is not null || abi.PendingFork is not null || abi.PendingExec is not null;

    /// <summary>
    /// After a call that made a thread or handed the vCPU to another: <paramref name="served"/> holds the caller's registers
    /// after the call (RAX the result, RCX the return address, R11 the flags, RSP the user stack), <paramref name="nr"/> its
    /// number. <paramref name="toStub"/> brings a vCPU stopped at the doorbell into a stub (false: it could not). Returns
    /// null, or why the run cannot go on.
    /// </summary>
    public string? AfterCall(in GeneralRegisters served, ulong nr, Func<bool> toStub)
    {
        var clone = abi.PendingClone;
        var handOver = abi.PendingSwitch;
        var fork = abi.PendingFork;
        var exec = abi.PendingExec;
        abi.ClearPending();
        if (clone is null && handOver is null && fork is null && exec is null)
        {
            return null;
        }

        if (exec is { } x)
        {
            // The caller becomes a fresh image of the executable; the call does not return to the old one.
            processes.Reload();
            var (entry, rsp, initialXsave) = startImage(x.Arguments, x.Environment, x.Path);
            var fresh = new GeneralRegisters { Rip = entry, Rsp = rsp, Rflags = Supervisor.InitialUserFlags };
            abi.CurrentThread.Context = new UserContext(fresh, initialXsave);
            abi.CurrentThread.FsBase = 0;
            return Load(abi.CurrentThread, toStub);
        }

        var caller = served;
        caller.Rip = served.Rcx;
        caller.Rflags = served.R11;
        var xsave = vcpu.GetXsaveState();
        if (clone is { } c)
        {
            // The new thread returns 0 from clone on its own stack, with the caller's other registers.
            var child = caller;
            child.Rax = 0;
            if (c.Stack != 0)
            {
                child.Rsp = c.Stack;
            }

            c.Thread.Context = new UserContext(child, xsave);
        }

        if (fork is { } f)
        {
            // The child returns 0 from fork (on the stack clone gave, if any) in a copy of the caller's memory.
            var child = caller;
            child.Rax = 0;
            if (f.Stack != 0)
            {
                child.Rsp = f.Stack;
            }

            f.Thread.Context = new UserContext(child, xsave);
            f.Thread.Process.Image = processes.Save();
        }

        if (handOver is null)
        {
            return null;
        }

        if (handOver.Previous.State != GuestThreadState.Exited)
        {
            var saved = caller;
            if (handOver.PreviousRepeatsCall)
            {
                // Back on the SYSCALL instruction with the call number: the thread makes the call again when it runs.
                saved.Rip -= 2;
                saved.Rax = nr;
            }

            handOver.Previous.Context = new UserContext(saved, xsave);
        }

        if (handOver.Next.Process != handOver.Previous.Process)
        {
            // Another process: its memory replaces the caller's (kept unless the caller's process has ended).
            if (!handOver.Previous.Process.Zombie)
            {
                handOver.Previous.Process.Image = processes.Save();
            }

            if (handOver.Next.Process.Image is { } image)
            {
                processes.Load(image);
                handOver.Next.Process.Image = null;
            }
        }

        return Load(handOver.Next, toStub);
    }

    /// <summary>Puts <paramref name="thread"/>'s context on the vCPU: it resumes through the shared <c>iretq</c> with a frame the host writes.</summary>
    private string? Load(GuestThread thread, Func<bool> toStub)
    {
        if (thread.Context is not UserContext context)
        {
            return $"Thread {thread.Tid} has no saved context.";
        }

        if (!toStub())
        {
            return "The vCPU could not be brought to a state where another thread can be loaded.";
        }

        Resume(context.Registers, context.Xsave);
        setFsBase(thread.FsBase);
        thread.Context = null;
        abi.Switched(thread);
        return null;
    }

    /// <summary>Resumes the thread on the vCPU in <paramref name="regs"/> and <paramref name="xsave"/> instead of where its call returns (a signal handler, or rt_sigreturn's context).</summary>
    public string? LoadUser(in GeneralRegisters regs, XsaveState xsave, Func<bool> toStub)
    {
        if (!toStub())
        {
            return "The vCPU could not be brought to a state where a signal handler can be entered.";
        }

        Resume(regs, xsave);
        return null;
    }

    /// <summary>Writes the <c>iretq</c> frame for <paramref name="regs"/> (RFLAGS sanitised, CS and SS the user selectors) and points the vCPU at the shared <c>iretq</c>.</summary>
    private void Resume(in GeneralRegisters regs, XsaveState xsave)
    {
        ulong userFlags = (regs.Rflags & Supervisor.UserFlagsMask) | Supervisor.InitialUserFlags;
        Span<ulong> iret = [regs.Rip, GuestLayout.UserCode, userFlags, regs.Rsp, GuestLayout.UserData];
        memory.Write(new GuestAddress(ResumeFrame - GuestLayout.SupervisorBase), MemoryMarshal.AsBytes(iret));
        var kernel = regs;
        kernel.Rsp = ResumeFrame;
        kernel.Rip = GuestLayout.ResumeAddress;
        kernel.Rflags = Rflags.Fixed;
        vcpu.SetGeneralRegisters(kernel);
        vcpu.SetXsaveState(xsave);
    }
}
