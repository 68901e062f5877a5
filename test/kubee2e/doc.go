// Package kubee2e runs Warren on a real two-node Kubernetes cluster
// (test/cluster: kubelet, containerd, runc, the CNI bridge, kube-proxy):
// the image is built from Warren's binaries, installed with its Helm chart
// exactly as a user would, and checked end to end — enrolment by namespace
// label without restarts, capture of new pods before their containers
// start, HBONE between nodes under service-account identities,
// AuthorizationPolicy enforcement, controller and agent restarts, release
// and uninstall leaving nodes and pods as they were.
package kubee2e
