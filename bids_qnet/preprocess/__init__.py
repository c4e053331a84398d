"""Preprocessing: registration to the template (antspyx), its quality gate, crop, slice stack."""
