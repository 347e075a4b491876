using System.Collections;
using KestrelProactor.Dispatching;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Http.Features;

namespace KestrelProactor.Internal;

/// <summary>
/// The connection is its own feature collection, as Kestrel's transports are: the features it implements cost
/// nothing, and what others set (Kestrel sets four or five per connection, TLS a few more) goes in a short list.
/// A dictionary-backed collection cost a few hundred bytes more per connection, which an idle keep-alive
/// connection pays for as long as it stays open.
/// </summary>
internal sealed partial class ProactorConnection : IFeatureCollection
{
    private static readonly Type[] s_ownFeatures =
    [
        typeof(IConnectionIdFeature),
        typeof(IConnectionTransportFeature),
        typeof(IConnectionItemsFeature),
        typeof(IConnectionLifetimeFeature),
        typeof(IConnectionEndPointFeature),
        typeof(IMemoryPoolFeature),
        typeof(IConnectionSocketFeature),
        typeof(IProactorConnectionFeature),
    ];

    // Features set from outside, and own features replaced or removed (a null value): looked up first.
    private List<KeyValuePair<Type, object?>>? _setFeatures;
    private int _featureRevision;

    public override IFeatureCollection Features => this;

    bool IFeatureCollection.IsReadOnly => false;

    int IFeatureCollection.Revision => _featureRevision;

    object? IFeatureCollection.this[Type key]
    {
        get
        {
            ArgumentNullException.ThrowIfNull(key);
            return TryGetSetFeature(key, out object? value) ? value : IsOwnFeature(key) ? this : null;
        }

        set
        {
            ArgumentNullException.ThrowIfNull(key);
            _featureRevision++;
            List<KeyValuePair<Type, object?>> set = _setFeatures ??= new List<KeyValuePair<Type, object?>>(4);
            for (int i = 0; i < set.Count; i++)
            {
                if (set[i].Key == key)
                {
                    set[i] = new KeyValuePair<Type, object?>(key, value);
                    return;
                }
            }

            set.Add(new KeyValuePair<Type, object?>(key, value));
        }
    }

    // Kestrel asks every request's collection for features it does not hold itself, and the misses fall through to
    // this one: whether a type is this connection's own is worked out once per type, not searched for each time.
    TFeature? IFeatureCollection.Get<TFeature>() where TFeature : default
        => TryGetSetFeature(typeof(TFeature), out object? value) ? (TFeature?)value
            : OwnFeature<TFeature>.IsOwn ? (TFeature)(object)this : default;

    void IFeatureCollection.Set<TFeature>(TFeature? instance) where TFeature : default
        => ((IFeatureCollection)this)[typeof(TFeature)] = instance;

    IEnumerator<KeyValuePair<Type, object>> IEnumerable<KeyValuePair<Type, object>>.GetEnumerator()
    {
        if (_setFeatures is { } set)
        {
            foreach (KeyValuePair<Type, object?> entry in set)
            {
                if (entry.Value is { } value)
                {
                    yield return new KeyValuePair<Type, object>(entry.Key, value);
                }
            }
        }

        foreach (Type own in s_ownFeatures)
        {
            if (!TryGetSetFeature(own, out _))
            {
                yield return new KeyValuePair<Type, object>(own, this);
            }
        }
    }

    IEnumerator IEnumerable.GetEnumerator() => ((IEnumerable<KeyValuePair<Type, object>>)this).GetEnumerator();

    private static bool IsOwnFeature(Type key) => Array.IndexOf(s_ownFeatures, key) >= 0;

    private static class OwnFeature<TFeature>
    {
        public static readonly bool IsOwn = IsOwnFeature(typeof(TFeature));
    }

    /// <summary>The value set from outside (or null for a removed own feature) when <paramref name="key"/> was set.</summary>
    private bool TryGetSetFeature(Type key, out object? value)
    {
        if (_setFeatures is { } set)
        {
            foreach (KeyValuePair<Type, object?> entry in set)
            {
                if (entry.Key == key)
                {
                    value = entry.Value;
                    return true;
                }
            }
        }

        value = null;
        return false;
    }
}
