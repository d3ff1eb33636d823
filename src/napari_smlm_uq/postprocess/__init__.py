"""After localization (Qt-free): drift correction, merging of blinks, FRC resolution and rendering, each
carrying the per-localization uncertainty (nm). Positions are nm from the top-left corner of raw pixel
(0, 0); frames are 0-based inside this package (the CSV tables are 1-based).
"""
