"""Command line of the bids_qnet BIDS App."""
