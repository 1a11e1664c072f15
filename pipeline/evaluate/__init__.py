"""The ``evaluate`` stage: perplexity, contamination, a bias probe and samples for one model."""
