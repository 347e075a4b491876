using Microsoft.Extensions.Options;

namespace KestrelProactor.Internal;

/// <summary>
/// Runs <see cref="ProactorOptionsValidator"/> through the options system, so that <c>ValidateOnStart</c> checks
/// the options (however they were set: code, appsettings.json, environment variables) when the host starts.
/// </summary>
internal sealed class ProactorOptionsValidation : IValidateOptions<ProactorTransportOptions>
{
    public ValidateOptionsResult Validate(string? name, ProactorTransportOptions options)
        => ProactorOptionsValidator.TryGetError(options, out _, out _, out string? message)
            ? ValidateOptionsResult.Fail(message)
            : ValidateOptionsResult.Success;
}
