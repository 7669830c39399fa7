"""upgate.graphs."""
