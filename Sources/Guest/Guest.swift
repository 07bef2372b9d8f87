public enum GuestModule {}
