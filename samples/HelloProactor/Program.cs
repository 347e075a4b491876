using KestrelProactor;
using Microsoft.AspNetCore.Connections;

var builder = WebApplication.CreateBuilder(args);

// One line switches Kestrel to the proactor transport (io_uring on Linux, IOCP on Windows).
builder.WebHost.UseProactorTransport();

if (builder.Configuration["urls"] is null && Environment.GetEnvironmentVariable("ASPNETCORE_URLS") is null)
{
    builder.WebHost.UseUrls("http://127.0.0.1:5080");
}

var app = builder.Build();

app.MapGet("/", (HttpContext context) =>
{
    var proactor = context.Features.Get<IProactorConnectionFeature>();
    return proactor is null
        ? "Hello from Kestrel's socket transport (the proactor backend is unavailable here; see the log).\n"
        : $"Hello from the proactor transport ({proactor.Backend}, dispatcher {proactor.DispatcherId}).\n";
});
app.MapGet("/plaintext", () => Results.Text("Hello, World!"));
app.MapPost("/echo", async (HttpRequest request, HttpResponse response) =>
{
    response.ContentType = "application/octet-stream";
    await request.Body.CopyToAsync(response.Body);
});

app.Lifetime.ApplicationStarted.Register(() =>
{
    foreach (var url in app.Urls)
    {
        Console.WriteLine($"HelloProactor listening on {url} (try: curl {url}/)");
    }
});

app.Run();
