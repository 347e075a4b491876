namespace KestrelProactor.Dispatching;

/// <summary>
/// Tracks every owner with operations in flight on one dispatcher, and how many operations each has.
/// Touched only by the dispatcher thread, so it takes no locks. An owner leaves the table only after its last
/// completion has arrived: the kernel can then no longer touch its buffers or its descriptor.
/// </summary>
internal sealed class OperationTable
{
    private IOperationOwner?[] _owners = new IOperationOwner?[64];
    private ushort[] _generations = new ushort[64];
    private int[] _inFlight = new int[64];
    private readonly Stack<int> _free = new();
    private int _next;

    /// <summary>
    /// A test hook: a completion for which it returns true is lost, as if the kernel never delivered it. Its
    /// operation stays counted in flight, its owner never hears of it, and the backend treats it as stale.
    /// </summary>
    internal static Func<IOperationOwner, OperationKind, bool>? TestLoseCompletionHook { get; set; }

    /// <summary>Owners in the table.</summary>
    public int Count { get; private set; }

    /// <summary>Operations submitted and not yet finally completed, over all owners.</summary>
    public long InFlight { get; private set; }

    public OperationToken Register(IOperationOwner owner)
    {
        int slot;
        if (!_free.TryPop(out slot))
        {
            if (_next == _owners.Length)
            {
                int size = _owners.Length * 2;
                Array.Resize(ref _owners, size);
                Array.Resize(ref _generations, size);
                Array.Resize(ref _inFlight, size);
            }

            slot = _next++;
        }

        _owners[slot] = owner;
        _inFlight[slot] = 0;
        var token = new OperationToken(slot, _generations[slot]);
        owner.Token = token;
        Count++;
        return token;
    }

    /// <summary>Removes an owner that has no operation in flight; its slot's generation moves on.</summary>
    public void Unregister(IOperationOwner owner)
    {
        OperationToken token = owner.Token;
        if (!IsCurrent(token) || !ReferenceEquals(_owners[token.Slot], owner))
        {
            return;
        }

        if (_inFlight[token.Slot] != 0)
        {
            throw new InvalidOperationException($"{owner.DisplayName} left the operation table with {_inFlight[token.Slot]} operations in flight.");
        }

        _owners[token.Slot] = null;
        _generations[token.Slot]++;
        _free.Push(token.Slot);
        Count--;
    }

    public void OnSubmitted(OperationToken token)
    {
        _inFlight[token.Slot]++;
        InFlight++;
    }

    /// <summary>Finds the owner of a completion; <paramref name="final"/> is false while a multishot operation goes on.</summary>
    public IOperationOwner? OnCompleted(ulong userData, bool final)
    {
        OperationToken token = OperationToken.FromUserData(userData);
        if (!IsCurrent(token))
        {
            return null;
        }

        IOperationOwner? owner = _owners[token.Slot];
        if (owner is not null && TestLoseCompletionHook is { } lose && lose(owner, OperationToken.KindOf(userData)))
        {
            return null;
        }

        if (owner is not null && final)
        {
            _inFlight[token.Slot]--;
            InFlight--;
        }

        return owner;
    }

    /// <summary>The owner a completion names, without counting it (fault injection looks before it delivers).</summary>
    public IOperationOwner? Peek(ulong userData)
    {
        OperationToken token = OperationToken.FromUserData(userData);
        return IsCurrent(token) ? _owners[token.Slot] : null;
    }

    public int InFlightOf(IOperationOwner owner) => IsCurrent(owner.Token) ? _inFlight[owner.Token.Slot] : 0;

    public void CopyOwners(List<IOperationOwner> destination)
    {
        for (int i = 0; i < _next; i++)
        {
            if (_owners[i] is { } owner)
            {
                destination.Add(owner);
            }
        }
    }

    private bool IsCurrent(OperationToken token)
        => (uint)token.Slot < (uint)_next && _generations[token.Slot] == token.Generation && _owners[token.Slot] is not null;
}
