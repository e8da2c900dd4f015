"""gentract_bids.cli"""
