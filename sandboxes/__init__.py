"""upgate.sandboxes."""
