namespace KestrelProactor.Dispatching;

/// <summary>
/// An owner's place in the operation table: its slot and the slot's generation when it registered. A
/// completion whose generation no longer matches the slot belongs to an owner that is gone and is dropped.
/// </summary>
internal readonly record struct OperationToken(int Slot, ushort Generation)
{
    // user_data layout: | slot (32 bits) | generation (16) | unused (8) | kind (8) |
    public ulong ToUserData(OperationKind kind) => ((ulong)(uint)Slot << 32) | ((ulong)Generation << 16) | (byte)kind;

    public static OperationToken FromUserData(ulong userData) => new((int)(userData >> 32), (ushort)(userData >> 16));

    public static OperationKind KindOf(ulong userData) => (OperationKind)(byte)userData;
}
