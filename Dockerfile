# relaybox image: the relaybox CLI plus the example services.
FROM golang:1.26-alpine AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /out/relaybox ./cmd/relaybox && \
    CGO_ENABLED=0 go build -trimpath -o /out/orders ./examples/orders && \
    CGO_ENABLED=0 go build -trimpath -o /out/inventory ./examples/inventory

FROM alpine:3.22
RUN apk add --no-cache ca-certificates wget && adduser -D -u 10001 relaybox
COPY --from=build /out/ /usr/local/bin/
USER relaybox
ENTRYPOINT ["relaybox"]
CMD ["relay"]
