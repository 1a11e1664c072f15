"""Use cases that cross domains (after Netflix Dispatch's flows): routes call a flow, a flow calls
the domain services in order, and domain services never import each other."""
