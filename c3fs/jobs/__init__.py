"""The artifact lifecycle: push and run jobs, download them, account for their storage."""
