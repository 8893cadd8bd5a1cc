//! Event sequence numbers that survive restarts.
