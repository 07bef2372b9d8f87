/// Placeholder: storage plugins land here.
public enum StorageModule {}
