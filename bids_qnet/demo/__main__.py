"""``python -m bids_qnet.demo``: the ``bids_qnet-demo`` command."""

import sys

from bids_qnet.demo.cli import main

sys.exit(main())
