//! kiln-aggregator
