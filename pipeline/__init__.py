"""remixmatch.pipeline."""
