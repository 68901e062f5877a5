// Package identity is the node agent's source of workload certificates: it
// holds one X.509-SVID per local SPIFFE identity, obtained from a CA by CSR
// and kept fresh in the background, plus the trust bundle to verify peers.
package identity
