"""gentract_bids.fodf"""
