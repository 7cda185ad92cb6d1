"""remixmatch.trainer."""
