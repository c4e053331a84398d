"""Inputs: the BIDS dataset, its validation, template and atlas, labels, participant outputs."""
