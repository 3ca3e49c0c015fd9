"""Handoff to staff: cases, the staff queue, notifiers, and relaying staff replies back."""
