"""Hostile inputs by class: each is refused with its documented reason, never a traceback or a hang."""
