"""A Flower app with fedcomp's compression added in a few lines."""
