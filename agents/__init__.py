"""upgate.agents."""
