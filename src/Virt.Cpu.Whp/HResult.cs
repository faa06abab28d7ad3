using System.Globalization;

namespace Virt.Cpu.Whp;

/// <summary>Turns failed HRESULTs of the Windows Hypervisor Platform into <see cref="HypervisorException"/>.</summary>
internal static class HResult
{
    public const int S_OK = 0;
    public const int E_NOTIMPL = unchecked((int)0x80004001);
    public const int E_FAIL = unchecked((int)0x80004005);
    public const int E_PENDING = unchecked((int)0x8000000A);
    public const int E_ACCESSDENIED = unchecked((int)0x80070005);
    public const int E_OUTOFMEMORY = unchecked((int)0x8007000E);
    public const int E_INVALIDARG = unchecked((int)0x80070057);
    public const int E_UNEXPECTED = unchecked((int)0x8000FFFF);
    public const int WHV_E_UNKNOWN_CAPABILITY = unchecked((int)0x80370300);
    public const int WHV_E_INSUFFICIENT_BUFFER = unchecked((int)0x80370301);
    public const int WHV_E_UNKNOWN_PROPERTY = unchecked((int)0x80370302);
    public const int WHV_E_UNSUPPORTED_HYPERVISOR_CONFIG = unchecked((int)0x80370303);
    public const int WHV_E_INVALID_PARTITION_CONFIG = unchecked((int)0x80370304);
    public const int WHV_E_GPA_RANGE_NOT_FOUND = unchecked((int)0x80370305);
    public const int WHV_E_VP_ALREADY_EXISTS = unchecked((int)0x80370306);
    public const int WHV_E_VP_DOES_NOT_EXIST = unchecked((int)0x80370307);
    public const int WHV_E_INVALID_VP_STATE = unchecked((int)0x80370308);
    public const int WHV_E_INVALID_VP_REGISTER_NAME = unchecked((int)0x80370309);

    public static bool Failed(int hresult) => hresult < 0;

    /// <summary>Throws a <see cref="HypervisorException"/> naming <paramref name="function"/> when <paramref name="hresult"/> is a failure code.</summary>
    public static void Check(int hresult, string function)
    {
        if (hresult < 0)
        {
            throw ToException(function, hresult);
        }
    }

    /// <summary>The exception for a failed call: operation = function name, error code = HRESULT, message with the hex HRESULT and its meaning.</summary>
    public static HypervisorException ToException(string function, int hresult) =>
        new(function, hresult, Describe(hresult));

    /// <summary>e.g. <c>HRESULT 0x80370304 (WHV_E_INVALID_PARTITION_CONFIG: the partition configuration is invalid)</c>.</summary>
    public static string Describe(int hresult)
    {
        string hex = "0x" + ((uint)hresult).ToString("X8", CultureInfo.InvariantCulture);
        return Name(hresult) is { } name ? $"HRESULT {hex} ({name})" : $"HRESULT {hex}";
    }

    private static string? Name(int hresult) => hresult switch
    {
        E_NOTIMPL => "E_NOTIMPL: not implemented by this version of Windows",
        E_FAIL => "E_FAIL: unspecified failure",
        E_PENDING => "E_PENDING: the data is not yet available",
        E_ACCESSDENIED => "E_ACCESSDENIED: access denied",
        E_OUTOFMEMORY => "E_OUTOFMEMORY: out of memory",
        E_INVALIDARG => "E_INVALIDARG: an argument is invalid",
        E_UNEXPECTED => "E_UNEXPECTED: the call was not expected in this state",
        WHV_E_UNKNOWN_CAPABILITY => "WHV_E_UNKNOWN_CAPABILITY: this version of Windows does not know the capability",
        WHV_E_INSUFFICIENT_BUFFER => "WHV_E_INSUFFICIENT_BUFFER: the buffer is too small",
        WHV_E_UNKNOWN_PROPERTY => "WHV_E_UNKNOWN_PROPERTY: this version of Windows does not know the property",
        WHV_E_UNSUPPORTED_HYPERVISOR_CONFIG => "WHV_E_UNSUPPORTED_HYPERVISOR_CONFIG: the hypervisor configuration is not supported",
        WHV_E_INVALID_PARTITION_CONFIG => "WHV_E_INVALID_PARTITION_CONFIG: the partition configuration is invalid",
        WHV_E_GPA_RANGE_NOT_FOUND => "WHV_E_GPA_RANGE_NOT_FOUND: no guest physical range is mapped there",
        WHV_E_VP_ALREADY_EXISTS => "WHV_E_VP_ALREADY_EXISTS: the virtual processor already exists",
        WHV_E_VP_DOES_NOT_EXIST => "WHV_E_VP_DOES_NOT_EXIST: the virtual processor does not exist",
        WHV_E_INVALID_VP_STATE => "WHV_E_INVALID_VP_STATE: the virtual processor is not in a valid state",
        WHV_E_INVALID_VP_REGISTER_NAME => "WHV_E_INVALID_VP_REGISTER_NAME: a register name is invalid",
        _ => null,
    };
}
