namespace KestrelProactor.Perf;

/// <summary>The command line of the benchmark server. Unknown or malformed arguments are errors, never ignored.</summary>
internal sealed class BenchmarkServerArguments
{
    public const string Usage =
        "usage: BenchmarkServer --transport sockets|proactor [--port 5000] [--h2-port 5001] [--inline] [--dispatchers N]\n" +
        "                       [--https-port P] [--proxy-backend P] [--fault none|status500|corrupt-bytes|crash]\n" +
        "  --inline        UnsafePreferInlineScheduling on the chosen transport\n" +
        "  --https-port    also serve HTTP/1.1 over TLS there, with a self-signed certificate made at start\n" +
        "  --proxy-backend forward /proxy/* to http://127.0.0.1:P/* through a reverse proxy\n" +
        "  --dispatchers   proactor DispatcherCount (default: processor count); ignored by sockets\n" +
        "  --fault         deliberately break the server, to prove the driver's checks can fail";

    public string Transport { get; private set; } = "";
    public int Port { get; private set; } = 5000;
    public int Http2Port { get; private set; } = 5001;
    public bool Inline { get; private set; }
    public int? Dispatchers { get; private set; }
    public int? HttpsPort { get; private set; }
    public int? ProxyBackendPort { get; private set; }
    public string Fault { get; private set; } = "none";

    public static bool TryParse(string[] args, out BenchmarkServerArguments parsed, out string error)
    {
        parsed = new BenchmarkServerArguments();
        error = "";
        for (int i = 0; i < args.Length; i++)
        {
            string name = args[i];
            string? value = i + 1 < args.Length ? args[i + 1] : null;
            switch (name)
            {
                case "--inline":
                    parsed.Inline = true;
                    continue;
                case "--transport" or "--port" or "--h2-port" or "--https-port" or "--proxy-backend" or "--dispatchers" or "--fault" when value is null:
                    error = $"{name} needs a value";
                    return false;
                case "--transport":
                    parsed.Transport = value!;
                    break;
                case "--port" when int.TryParse(value, out int port) && port is > 0 and < 65536:
                    parsed.Port = port;
                    break;
                case "--h2-port" when int.TryParse(value, out int h2Port) && h2Port is > 0 and < 65536:
                    parsed.Http2Port = h2Port;
                    break;
                case "--https-port" when int.TryParse(value, out int httpsPort) && httpsPort is > 0 and < 65536:
                    parsed.HttpsPort = httpsPort;
                    break;
                case "--proxy-backend" when int.TryParse(value, out int backendPort) && backendPort is > 0 and < 65536:
                    parsed.ProxyBackendPort = backendPort;
                    break;
                case "--dispatchers" when int.TryParse(value, out int dispatchers) && dispatchers is >= 1 and <= 256:
                    parsed.Dispatchers = dispatchers;
                    break;
                case "--fault" when value is "none" or "status500" or "corrupt-bytes" or "crash":
                    parsed.Fault = value!;
                    break;
                default:
                    error = value is null ? $"unknown argument '{name}'" : $"bad argument '{name} {value}'";
                    return false;
            }

            i++;
        }

        if (parsed.Transport is not ("sockets" or "proactor"))
        {
            error = "--transport must be 'sockets' or 'proactor'";
            return false;
        }

        int?[] ports = [parsed.Port, parsed.Http2Port, parsed.HttpsPort, parsed.ProxyBackendPort];
        if (ports.Where(p => p.HasValue).Distinct().Count() != ports.Count(p => p.HasValue))
        {
            error = "--port, --h2-port, --https-port and --proxy-backend must all differ";
            return false;
        }

        return true;
    }
}
