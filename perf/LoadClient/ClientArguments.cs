namespace KestrelProactor.Perf;

/// <summary>"--name value" pairs; every value is read as a number or a path, and a missing required one throws.</summary>
internal sealed class ClientArguments
{
    private readonly Dictionary<string, string> _values = new(StringComparer.Ordinal);

    public static ClientArguments Parse(ReadOnlySpan<string> args)
    {
        var parsed = new ClientArguments();
        for (int i = 0; i < args.Length; i += 2)
        {
            if (!args[i].StartsWith("--", StringComparison.Ordinal) || i + 1 >= args.Length)
            {
                throw new ArgumentException($"expected '--name value' at '{args[i]}'");
            }

            parsed._values[args[i][2..]] = args[i + 1];
        }

        return parsed;
    }

    public long GetInt64(string name, long? defaultValue = null)
    {
        if (_values.TryGetValue(name, out string? text))
        {
            return long.TryParse(text, out long value) && value >= 0
                ? value
                : throw new ArgumentException($"--{name} must be a non-negative integer, not '{text}'");
        }

        return defaultValue ?? throw new ArgumentException($"--{name} is required");
    }

    public int GetInt32(string name, int? defaultValue = null) => checked((int)GetInt64(name, defaultValue));

    public string? GetString(string name) => _values.GetValueOrDefault(name);
}
