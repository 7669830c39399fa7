"""The approval service: `upgate serve`, an HTTP API and a chat page over the same Runner.

People log in with their credential; the service checks roles on the server, signs their
decisions with its own key, and records every question, answer and decision in the ledger.
"""
