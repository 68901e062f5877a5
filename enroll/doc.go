// Package enroll decides which of a node's Kubernetes pods the agent
// captures (Istio ambient's dataplane-mode labels) and finds each captured
// pod's network namespace, from the CNI plugin or by scanning the node.
package enroll
