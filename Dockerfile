# StreamHouse broker image: build the release binary, run it on a slim Debian.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p streamhouse-broker

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/streamhouse /usr/local/bin/streamhouse
VOLUME /data
EXPOSE 9092
ENTRYPOINT ["streamhouse", "serve"]
CMD ["--listen", "0.0.0.0:9092", "--advertised-listener", "127.0.0.1:9092", "--data-dir", "/data"]
