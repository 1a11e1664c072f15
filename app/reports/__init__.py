"""HTML reports with charts drawn by matplotlib (a base dependency; it does not pull torch)."""
