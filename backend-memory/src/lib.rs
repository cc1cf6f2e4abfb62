//! Weir's in-memory backend (being written).
