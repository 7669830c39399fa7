"""upgate.evals."""
