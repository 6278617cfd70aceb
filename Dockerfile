# A FROM-scratch image holding one static binary (for users with Docker; the project's own
# machines have no Docker engine, so scripts/static-check.sh proves the same thing by running
# the binary in an empty root instead).
#
# Build the binary first (no C toolchain and no system linker needed: rustup's rust-lld links it):
#   rustup target add x86_64-unknown-linux-musl
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld \
#     cargo build --release --target x86_64-unknown-linux-musl --example static-service
# Then:
#   docker build -t purekafka-static-service .
#   docker run --rm --network host -e KAFKA_BROKERS=127.0.0.1:9092 purekafka-static-service --topic events
#
# There is no /etc/hosts or /etc/resolv.conf in the image: give brokers as IP addresses, or
# mount those files (docker run -v /etc/resolv.conf:/etc/resolv.conf:ro ...).
FROM scratch
COPY target/x86_64-unknown-linux-musl/release/examples/static-service /static-service
ENTRYPOINT ["/static-service"]
