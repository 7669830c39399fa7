"""upgate's entry point for clients: one OpenAI-compatible address that splits an alias's
traffic between versions by weight (see `upgate.gateway.routes`)."""
