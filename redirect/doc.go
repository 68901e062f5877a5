// Package redirect programs traffic capture inside an enrolled pod's network
// namespace (NAT redirects, connection marks and a policy-routing table), the
// way Istio ztunnel's in-pod mode does, with an nftables and an iptables backend.
package redirect
