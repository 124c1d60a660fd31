//! HL7 v2 core (not yet written).
