"""Improvement recipes: reviewable transformations of a target that need little intelligence.

Some recipes are standalone scripts that run inside a sandbox rather than in upgate's own
process (``lora_train.py`` needs torch and peft, and must never import upgate); read them
as files, do not import them.
"""
