"""Nipype workflows: wiring only; the work is done by the step functions and computation modules."""
