"""Cleaning text: normalisation and quality filters, n-gram hashing and near-duplicates, PII."""
