// An unmodified site: nothing here knows about the proactor transport.
var builder = WebApplication.CreateBuilder(args);
builder.Services.AddRazorPages();

var app = builder.Build();
app.MapRazorPages();
app.MapGet("/healthz", () => "ok");
app.Run();
