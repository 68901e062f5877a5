// Package install chains warren-cni into a node's existing CNI network
// configuration and takes it out again, leaving the primary plugin's file as
// it was.
package install
