"""hyperloom: hypernetworks over any unmodified PyTorch module."""
