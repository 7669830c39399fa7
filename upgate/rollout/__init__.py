"""Staged rollout (canary) of a served version through the gateway, with automatic abort."""
