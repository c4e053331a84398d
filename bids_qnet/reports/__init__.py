"""Participant reports: figures and an HTML page built from derivatives already written."""
