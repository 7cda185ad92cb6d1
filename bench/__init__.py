"""remixmatch.bench."""
