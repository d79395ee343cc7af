//! kiln-testkit
