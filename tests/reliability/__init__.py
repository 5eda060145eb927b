"""The reliability suite (issue 7): crashes, corruption, concurrency, hostile input, security."""
