// Package cni is Warren's chained CNI plugin and the agent-side socket it
// talks to: the plugin tells the node agent about each new pod's network
// namespace so that the pod's containers start already captured.
package cni
