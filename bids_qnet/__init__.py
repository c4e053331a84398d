"""bids_qnet: a BIDS App for Q-Net, deep learning of brain iron patterns from QSM, R2* and T1w."""

__version__ = "0.2.2"

CODE_URL = "https://github.com/bids-qnet/bids_qnet"
