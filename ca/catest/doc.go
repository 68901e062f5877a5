// Package catest builds test certificate hierarchies (a root and an
// intermediate CA) and writes them in Istio's plugged-in CA layout, for
// tests of the CA and of everything that verifies its chains.
package catest
