using System.Collections;

namespace KestrelProactor.Internal;

/// <summary>A small dictionary for <c>ConnectionContext.Items</c>, created on first use.</summary>
internal sealed class ConnectionItems : IDictionary<object, object?>
{
    private readonly Dictionary<object, object?> _items = new();

    public object? this[object key]
    {
        get => _items.TryGetValue(key, out object? value) ? value : null;
        set => _items[key] = value;
    }

    public ICollection<object> Keys => _items.Keys;

    public ICollection<object?> Values => _items.Values;

    public int Count => _items.Count;

    public bool IsReadOnly => false;

    public void Add(object key, object? value) => _items.Add(key, value);

    public void Add(KeyValuePair<object, object?> item) => ((ICollection<KeyValuePair<object, object?>>)_items).Add(item);

    public void Clear() => _items.Clear();

    public bool Contains(KeyValuePair<object, object?> item) => ((ICollection<KeyValuePair<object, object?>>)_items).Contains(item);

    public bool ContainsKey(object key) => _items.ContainsKey(key);

    public void CopyTo(KeyValuePair<object, object?>[] array, int arrayIndex) => ((ICollection<KeyValuePair<object, object?>>)_items).CopyTo(array, arrayIndex);

    public IEnumerator<KeyValuePair<object, object?>> GetEnumerator() => _items.GetEnumerator();

    public bool Remove(object key) => _items.Remove(key);

    public bool Remove(KeyValuePair<object, object?> item) => ((ICollection<KeyValuePair<object, object?>>)_items).Remove(item);

    public bool TryGetValue(object key, out object? value) => _items.TryGetValue(key, out value);

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();
}
