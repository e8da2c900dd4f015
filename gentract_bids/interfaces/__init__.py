"""gentract_bids.interfaces"""
