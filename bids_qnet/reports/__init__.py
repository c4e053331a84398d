"""Reports: figures drawn from arrays and HTML pages built from derivatives already written."""
