// Package kube authenticates CA callers by their Kubernetes service-account
// tokens (TokenReview plus a check that the bound pod still exists) and
// authorizes node agents to obtain the identities of pods on their node.
package kube
