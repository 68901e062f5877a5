//go:build !linux

package enroll

import (
	"errors"
	"net/netip"
)

var errNoNetNS = errors.New("network namespaces need Linux")

// FindNetNS always fails off Linux.
func FindNetNS(dir string, ips []netip.Addr) (string, error) { return "", errNoNetNS }

func scanNetNS(dir string) (netnsIndex, error) { return nil, errNoNetNS }
