"""Sync: pulls changes from the portal into the store and appends the events they cause."""
