"""gentract_bids.train"""
