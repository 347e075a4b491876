namespace KestrelProactor.Tests;
public class Smoke { [Fact] public void True() => Assert.True(true); }
