using Microsoft.Extensions.Options;

namespace KestrelProactor.Internal;

/// <summary>
/// Runs <see cref="ProactorOptionsValidator"/> through the options system, so that <c>ValidateOnStart</c> checks
/// the options (however they were set: code, appsettings.json, environment variables) when the host starts.
/// </summary>
internal sealed class ProactorOptionsValidation : IValidateOptions<ProactorTransportOptions>
{
    public ValidateOptionsResult Validate(string? name, ProactorTransportOptions options)
    {
        try
        {
            ProactorOptionsValidator.Validate(options);
            return ValidateOptionsResult.Success;
        }
        catch (ArgumentOutOfRangeException ex)
        {
            // The validator's message already names the option, its value and the allowed values.
            return ValidateOptionsResult.Fail(ex.Message);
        }
    }
}
