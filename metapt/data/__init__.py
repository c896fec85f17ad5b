"""Data: readers per format, the synthetic world, tokenisation and batching."""
