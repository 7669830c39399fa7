"""Notifications: a durable outbox beside the ledger, channels (Slack, Standard Webhooks),
a delivery worker, and approvals from Slack buttons."""
