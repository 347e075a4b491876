using KestrelProactor;

var builder = WebApplication.CreateBuilder(args);

// Options from appsettings.json ("Kestrel": { "Proactor": { ... } }) and Kestrel__Proactor__* environment variables.
builder.WebHost.UseProactorTransport(builder.Configuration.GetSection(ProactorTransportOptions.ConfigurationSectionName));

// On SIGTERM Kestrel stops accepting, lets requests in flight finish, and closes idle connections; this bounds the
// wait for slow ones. The load balancer sends new requests to the other instance meanwhile.
builder.Services.Configure<HostOptions>(o =>
    o.ShutdownTimeout = TimeSpan.FromSeconds(builder.Configuration.GetValue("ShutdownTimeoutSeconds", 20)));

var app = builder.Build();
string instance = app.Configuration["Instance"] ?? Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture);

app.MapGet("/", (HttpContext context) =>
    $"instance {instance}, transport {context.Features.Get<IProactorConnectionFeature>()?.Backend ?? "sockets"}\n");
app.MapGet("/healthz", () => "ok");
app.Run();
