"""mount and umount commands (FUSE)."""
