//! Compatibility tests live in `tests/` (the `rdkafka` crate, in process) and in the Python suite
//! beside this crate (Java tools, confluent-kafka, kafka-python, kcat), which `run.sh` runs against
//! StreamHouse and a real Apache Kafka side by side.
