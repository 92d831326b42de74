"""Property checks' material: scenarios as data, their strategies, their interpreter."""
