// Command warren-cni is Warren's chained CNI plugin: the container runtime
// runs it after the node's primary plugin, and it tells the local Warren
// agent about the new pod so the pod starts captured.
package main

import "github.com/warren-mesh/warren/cni"

func main() { cni.Run() }
