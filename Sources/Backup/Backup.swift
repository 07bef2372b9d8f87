public enum BackupModule {}
