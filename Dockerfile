# flora in a container: `docker build -t flora .` (with
# `--build-arg FLORA_GIT_COMMIT=$(git rev-parse --short HEAD)` for `flora --version`'s commit:
# .git is not in the build context) then
#   docker run -p 8000:8000 -v flora-data:/data -e FLORA_ADMIN_TOKEN=... flora
# /data is the project folder (flora.toml, models/, runs/, collected_data/, dataset/).
#
# Stage 1 builds one statically linked binary (glibc's crt-static), so the image needs no
# libraries at all: stage 2 is `scratch`, holding the binary and an empty project folder.
# Base images are pinned by version; pin them by digest too in production
# (`docker buildx imagetools inspect rust:1.95.0-slim-bookworm`).
FROM rust:1.95.0-slim-bookworm AS build
# nasm gives libjpeg-turbo (the mozjpeg crate, built from C sources) its x86 SIMD.
RUN apt-get update && apt-get install -y --no-install-recommends nasm \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
ARG FLORA_GIT_COMMIT=unknown
ENV FLORA_GIT_COMMIT=$FLORA_GIT_COMMIT
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY benches ./benches
COPY assets ./assets
RUN RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --bin flora --target x86_64-unknown-linux-gnu \
 && mkdir -p /out/data/models /out/data/runs /out/data/collected_data \
 && cp target/x86_64-unknown-linux-gnu/release/flora /out/flora

FROM scratch
COPY --from=build /out/flora /flora
COPY --from=build --chown=10001:10001 /out/data /data
# No shell and no root: an unprivileged user owns the project folder.
USER 10001:10001
WORKDIR /data
VOLUME ["/data/models", "/data/runs", "/data/collected_data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=4s --start-period=10s --retries=3 \
    CMD ["/flora", "health", "--quiet", "--url", "http://127.0.0.1:8000/health"]
ENTRYPOINT ["/flora"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
