"""gentract_bids.evaluation"""
