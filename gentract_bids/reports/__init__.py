"""gentract_bids.reports"""
