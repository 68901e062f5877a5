// Package image writes container images made of static binaries alone (no
// base image, nothing pulled) as docker-archive tarballs that containerd
// imports with `ctr images import`, using go-containerregistry.
package image
