//! MLLP client (not yet written).
