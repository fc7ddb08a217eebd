"""The benchmark harness: `just bench`."""
