//! stateright models over weir-core (being written).
