"""GenTract-BIDS: generative global tractography as a BIDS-App."""

__version__ = "0.1.0"
