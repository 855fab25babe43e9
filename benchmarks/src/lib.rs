//! Benchmarks live in `benches/` (criterion, hot paths) and in `bench.py` (whole-broker runs against a
//! real Kafka). This crate has no code of its own.
