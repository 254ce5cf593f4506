"""Integrations of fastattn with serving and modelling stacks."""
