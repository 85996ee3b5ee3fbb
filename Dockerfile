# quantmesh container image: a static binary (CGO_ENABLED=0: SQLite is the
# pure-Go modernc.org/sqlite, market data and migrations are embedded) on
# distroless, running as non-root.
#
#   docker build -t quantmesh .
#   docker run -p 50051:50051 -p 8080:8080 -e QUANTMESH_API_KEYS=key:admin quantmesh
#
# `quantmesh up` refuses a non-loopback listen address with authentication
# off. The image listens on 0.0.0.0, so give it API keys
# (QUANTMESH_API_KEYS="key:role[:name],..." or QUANTMESH_API_KEYS_FILE
# naming a mounted file) or, on a private network only, QUANTMESH_INSECURE=true.
# Every flag has a QUANTMESH_<FLAG> variable (README, "Configuration").

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/quantmesh ./cmd/quantmesh \
 && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/quantmesh /usr/local/bin/quantmesh
# SQLite and artifacts when QUANTMESH_DATABASE_URL is empty; owned by nonroot (65532).
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
WORKDIR /data
VOLUME ["/data"]
# 50051: gRPC (health, reflection). 8080: REST gateway, /metrics, /healthz, /readyz.
EXPOSE 50051 8080
ENTRYPOINT ["/usr/local/bin/quantmesh", "up", "--grpc-addr=0.0.0.0:50051", "--http-addr=0.0.0.0:8080", "--data-dir=/data"]
