"""gentract_bids.baselines"""
