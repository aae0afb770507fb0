"""Training the stand-in detector: upstream's ctdet targets and losses, and
the loop that trains and records it (train/standin.py)."""
