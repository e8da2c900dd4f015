"""gentract_bids.io"""
