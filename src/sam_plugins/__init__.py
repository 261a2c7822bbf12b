"""sam-plugins: Segment Anything from scratch, for napari, FiftyOne and Python."""
