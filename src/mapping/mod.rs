//! Declarative mappings (not yet written).
