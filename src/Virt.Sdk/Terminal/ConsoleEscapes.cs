namespace Virt;

/// <summary>What a console escape sequence asks for.</summary>
internal enum ConsoleCommand
{
    /// <summary>Nothing: the bytes go to the guest.</summary>
    None,

    /// <summary>Stop the VM and leave (escape, then <c>x</c>).</summary>
    Exit,

    /// <summary>Print the escape help (escape, then <c>h</c> or <c>?</c>).</summary>
    Help,
}

/// <summary>
/// Splits terminal input into bytes for the guest and escape commands, QEMU-style: the escape character (Ctrl-A by
/// default) followed by <c>x</c> exits, by <c>h</c> or <c>?</c> prints help, by itself sends one escape character to the
/// guest; followed by anything else, both bytes go to the guest. The state survives across reads, so an escape split
/// between two reads still works.
/// </summary>
internal sealed class ConsoleEscapes(byte escape)
{
    private bool _pending;

    /// <summary>The escape character.</summary>
    public byte Escape { get; } = escape;

    /// <summary>
    /// Appends the bytes of <paramref name="input"/> meant for the guest to <paramref name="toGuest"/> and returns the first
    /// command found; input after a command is left unprocessed, and <paramref name="consumed"/> says how much was taken.
    /// </summary>
    public ConsoleCommand Process(ReadOnlySpan<byte> input, List<byte> toGuest, out int consumed)
    {
        for (int i = 0; i < input.Length; i++)
        {
            byte b = input[i];
            if (_pending)
            {
                _pending = false;
                switch (b)
                {
                    case (byte)'x' or (byte)'X':
                        consumed = i + 1;
                        return ConsoleCommand.Exit;
                    case (byte)'h' or (byte)'H' or (byte)'?':
                        consumed = i + 1;
                        return ConsoleCommand.Help;
                    default:
                        if (b != Escape)
                        {
                            toGuest.Add(Escape);
                        }

                        toGuest.Add(b);
                        continue;
                }
            }

            if (b == Escape)
            {
                _pending = true;
            }
            else
            {
                toGuest.Add(b);
            }
        }

        consumed = input.Length;
        return ConsoleCommand.None;
    }

    /// <summary>The help text, e.g. for Ctrl-A: lines ending in CR LF, since the terminal is raw.</summary>
    public string HelpText()
    {
        string name = Escape < 32 ? $"Ctrl-{(char)('A' + Escape - 1)}" : $"'{(char)Escape}'";
        return $"\r\n{name} x    stop the VM and leave\r\n{name} h    this help\r\n{name} {name}  send {name} to the guest\r\n";
    }
}
