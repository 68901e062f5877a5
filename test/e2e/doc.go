// Package e2e holds Warren's end-to-end tests: real agents, real capture
// rules and real sockets on a two-node cluster built from network
// namespaces. They need root and the binaries from `make build`.
package e2e
