// Package kube gives integration tests a real etcd and kube-apiserver on
// loopback, built from Go modules and cached across runs, with generated PKI
// and an admin client.
package kube
