"""Wiring of both levels: the nipype graph, its steps and sink, the group level and its results."""
