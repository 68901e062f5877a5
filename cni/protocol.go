package cni

import (
	"errors"
	"fmt"
	"net/netip"
)

// The agent protocol: HTTP/1.1 over a unix socket, JSON bodies, one POST per
// CNI command. A reply other than 200 carries an errorReply.
const (
	pathAdd = "/v1/add"
	pathDel = "/v1/del"
	// maxBody bounds a request body; a real one is a few hundred bytes.
	maxBody = 64 << 10
)

// DefaultSocket is where the agent listens and the plugin connects unless
// configured otherwise. /var/run is a tmpfs on most nodes, so a socket left
// by a crashed agent does not survive a reboot.
const DefaultSocket = "/var/run/warren/cni.sock"

// AddRequest is what the plugin knows about a pod after the primary plugin
// set up its network.
type AddRequest struct {
	PodName      string `json:"podName"`
	PodNamespace string `json:"podNamespace"`
	// PodUID is K8S_POD_UID from CNI_ARGS; empty with runtimes that do not
	// pass it.
	PodUID      string `json:"podUID,omitempty"`
	ContainerID string `json:"containerID"`
	// NetNS is the path of the pod's network namespace (CNI_NETNS).
	NetNS  string `json:"netns"`
	IfName string `json:"ifName"`
	// IPs are the pod's addresses from the previous plugin's result, with
	// their prefix lengths.
	IPs []netip.Prefix `json:"ips"`
}

// Validate reports the fields the agent cannot do without.
func (r AddRequest) Validate() error {
	var errs []error
	if r.PodName == "" || r.PodNamespace == "" {
		errs = append(errs, errors.New("pod name and namespace must be set"))
	}
	if r.NetNS == "" {
		errs = append(errs, errors.New("netns must be set"))
	}
	if r.ContainerID == "" {
		errs = append(errs, errors.New("container id must be set"))
	}
	for _, p := range r.IPs {
		if !p.IsValid() {
			errs = append(errs, fmt.Errorf("invalid ip %v", p))
		}
	}
	return errors.Join(errs...)
}

// DelRequest is what the plugin knows when a pod's sandbox goes away. NetNS
// may be empty: runtimes call DEL again after the namespace is gone.
type DelRequest struct {
	PodName      string `json:"podName"`
	PodNamespace string `json:"podNamespace"`
	ContainerID  string `json:"containerID"`
	NetNS        string `json:"netns,omitempty"`
}

// addReply is the body of a 200 answer to /v1/add.
type addReply struct {
	Captured bool `json:"captured"`
}

// errorReply is the body of every non-200 answer.
type errorReply struct {
	Error string `json:"error"`
}
