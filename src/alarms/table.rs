//! The set of alarms and their transitions.
