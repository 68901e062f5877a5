// Package deploy holds Warren's Helm chart (helm/warren) and the manifests
// rendered from it (manifests/warren.yaml); its tests lint and render the
// chart and check every rendered object against a real kube-apiserver.
package deploy
