"""gentract_bids.model"""
