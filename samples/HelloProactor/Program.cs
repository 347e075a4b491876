using KestrelProactor;
using Microsoft.AspNetCore.Diagnostics.HealthChecks;
using Microsoft.Extensions.Diagnostics.HealthChecks;

var builder = WebApplication.CreateBuilder(args);

// One line switches Kestrel to the proactor transport (io_uring on Linux, IOCP on Windows).
builder.WebHost.UseProactorTransport();

// One line adds its health check: Healthy on io_uring or IOCP, Degraded on the socket fallback (with the reason),
// Unhealthy once a dispatcher has failed.
builder.Services.AddHealthChecks().AddProactorTransport();

if (builder.Configuration["urls"] is null && Environment.GetEnvironmentVariable("ASPNETCORE_URLS") is null)
{
    builder.WebHost.UseUrls("http://127.0.0.1:5080");
}

var app = builder.Build();

app.MapGet("/", (HttpContext context) =>
{
    var proactor = context.Features.Get<IProactorConnectionFeature>();
    return proactor is null
        ? "Hello from Kestrel's socket transport (the proactor backend is unavailable here; see the log or /healthz).\n"
        : $"Hello from the proactor transport ({proactor.Backend}, dispatcher {proactor.DispatcherId}).\n";
});
app.MapGet("/plaintext", () => Results.Text("Hello, World!"));
app.MapPost("/echo", async (HttpRequest request, HttpResponse response) =>
{
    response.ContentType = "application/octet-stream";
    await request.Body.CopyToAsync(response.Body);
});

// 200 for Healthy and Degraded, 503 for Unhealthy; the body says which check said what, and why.
app.MapHealthChecks("/healthz", new HealthCheckOptions { ResponseWriter = WriteHealthAsync });

app.Lifetime.ApplicationStarted.Register(() =>
{
    foreach (var url in app.Urls)
    {
        Console.WriteLine($"HelloProactor listening on {url} (try: curl {url}/ and {url}/healthz)");
    }
});

app.Run();

static Task WriteHealthAsync(HttpContext context, HealthReport report)
{
    context.Response.ContentType = "text/plain; charset=utf-8";
    var text = new System.Text.StringBuilder().Append(report.Status).Append('\n');
    foreach (var (name, entry) in report.Entries)
    {
        text.Append(name).Append(": ").Append(entry.Status).Append(": ").Append(entry.Description).Append('\n');
    }

    return context.Response.WriteAsync(text.ToString());
}
