"""gentract_bids.workflows"""
