"""How outputs are named and written: the naming table, the atomic writer, the sidecars."""
