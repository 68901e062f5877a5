package hbone

import (
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"strings"

	"golang.org/x/net/http2/hpack"
)

// parseAuthority parses a CONNECT :authority, which in HBONE is always an IP
// literal and port ("10.0.0.1:80", "[fd00::1]:80"); names are not accepted.
func parseAuthority(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("authority %q is not ip:port: %w", s, err)
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("authority %q has port 0", s)
	}
	if ap.Addr().Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("authority %q has an IPv6 zone", s)
	}
	return ap, nil
}

// sameIP compares addresses ignoring IPv4-in-IPv6 mapping and zones, since a
// dual-stack listener reports v4 peers as ::ffff:a.b.c.d.
func sameIP(a, b netip.Addr) bool {
	return a.Unmap().WithZone("") == b.Unmap().WithZone("")
}

// forwardedValue builds the RFC 7239 header value ztunnel sends:
// for="ip:port" and, when the service name is known, ;host=name.
func forwardedValue(client netip.AddrPort, host string) string {
	v := `for="` + client.String() + `"`
	if host != "" {
		v += ";host=" + host
	}
	return v
}

// parseForwardedFor extracts the first for="ip:port" of an RFC 7239
// forwarded header value. ok is false when there is none or it is not an
// address (an obfuscated identifier, a hostname).
func parseForwardedFor(v string) (netip.AddrPort, bool) {
	elem, _, _ := strings.Cut(v, ",")
	for _, pair := range strings.Split(elem, ";") {
		k, val, found := strings.Cut(strings.TrimSpace(pair), "=")
		if !found || !strings.EqualFold(k, "for") {
			continue
		}
		ap, err := netip.ParseAddrPort(strings.Trim(val, `"`))
		if err != nil {
			return netip.AddrPort{}, false
		}
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
	}
	return netip.AddrPort{}, false
}

// newTraceParent returns a W3C traceparent (version 00, random non-zero trace
// and span ids, not sampled). Trace ids need uniqueness, not secrecy, so the
// fast non-cryptographic generator is enough.
func newTraceParent() string {
	var b [24]byte
	for {
		for i := 0; i < len(b); i += 8 {
			v := rand.Uint64()
			for j := range 8 {
				b[i+j] = byte(v >> (8 * j))
			}
		}
		if nonZero(b[:16]) && nonZero(b[16:]) {
			break
		}
	}
	return "00-" + hex.EncodeToString(b[:16]) + "-" + hex.EncodeToString(b[16:]) + "-00"
}

func nonZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return true
		}
	}
	return false
}

// requestFields is the CONNECT request header block. Per RFC 9113 section
// 8.5 a CONNECT carries :method and :authority only, no :scheme or :path.
func requestFields(req *Request) []hpack.HeaderField {
	f := make([]hpack.HeaderField, 0, 5)
	f = append(f,
		hpack.HeaderField{Name: ":method", Value: "CONNECT"},
		hpack.HeaderField{Name: ":authority", Value: req.Authority.String()},
	)
	if req.Forwarded.IsValid() {
		f = append(f, hpack.HeaderField{Name: "forwarded", Value: forwardedValue(req.Forwarded, req.ForwardedHost)})
	}
	if req.Baggage != "" {
		f = append(f, hpack.HeaderField{Name: "baggage", Value: req.Baggage})
	}
	tp := req.TraceParent
	if tp == "" {
		tp = newTraceParent()
	}
	f = append(f, hpack.HeaderField{Name: "traceparent", Value: tp})
	return f
}

func statusFields(code int) []hpack.HeaderField {
	return []hpack.HeaderField{{Name: ":status", Value: strconv.Itoa(code)}}
}
