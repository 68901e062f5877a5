// Package hbone carries TCP connections between mesh nodes in HBONE tunnels:
// one HTTP/2 CONNECT stream per connection over mutual TLS 1.3 with SPIFFE
// identities, with a client connection pool and a server, compatible with
// Istio ambient's ztunnel.
package hbone
