"""gentract_bids.phantom"""
