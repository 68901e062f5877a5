package testbed

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// The classic libpcap file format: a 24-byte file header, then a 16-byte
// header before each frame. Little-endian, microsecond timestamps.
const (
	pcapMagic        = 0xa1b2c3d4
	pcapHeaderLen    = 24
	pcapRecHeaderLen = 16
	// linkTypeEthernet is LINKTYPE_ETHERNET: frames start at the MAC header.
	linkTypeEthernet = 1
)

// pcapHeader is the file header for version 2.4 Ethernet captures.
func pcapHeader() []byte {
	h := make([]byte, pcapHeaderLen)
	binary.LittleEndian.PutUint32(h[0:], pcapMagic)
	binary.LittleEndian.PutUint16(h[4:], 2)
	binary.LittleEndian.PutUint16(h[6:], 4)
	binary.LittleEndian.PutUint32(h[16:], snapLen)
	binary.LittleEndian.PutUint32(h[20:], linkTypeEthernet)
	return h
}

// pcapRecord is one frame's record; n is the frame's real length, of which
// only what fits in buf was captured.
func pcapRecord(ts time.Time, buf []byte, n int) []byte {
	incl := min(n, len(buf))
	r := make([]byte, pcapRecHeaderLen, pcapRecHeaderLen+incl)
	binary.LittleEndian.PutUint32(r[0:], uint32(ts.Unix()))
	binary.LittleEndian.PutUint32(r[4:], uint32(ts.Nanosecond()/1000))
	binary.LittleEndian.PutUint32(r[8:], uint32(incl))
	binary.LittleEndian.PutUint32(r[12:], uint32(n))
	return append(r, buf[:incl]...)
}

// snapLen is the largest frame recorded whole: veth passes GSO frames of up
// to 64 KiB, and this leaves headroom without truncating any of them.
const snapLen = 256 << 10

// Frames splits a capture returned by Capture into its Ethernet frames, so a
// test can look at each one (for example for a plaintext marker in TCP
// payloads) instead of searching the whole file.
func Frames(pcap []byte) ([][]byte, error) {
	if len(pcap) < pcapHeaderLen || binary.LittleEndian.Uint32(pcap) != pcapMagic {
		return nil, errors.New("parsing capture: not a little-endian pcap file")
	}
	var frames [][]byte
	for rest := pcap[pcapHeaderLen:]; len(rest) > 0; {
		if len(rest) < pcapRecHeaderLen {
			return nil, fmt.Errorf("parsing capture: truncated record header after %d frames", len(frames))
		}
		incl := int(binary.LittleEndian.Uint32(rest[8:]))
		rest = rest[pcapRecHeaderLen:]
		if incl > len(rest) {
			return nil, fmt.Errorf("parsing capture: truncated frame after %d frames", len(frames))
		}
		frames = append(frames, rest[:incl:incl])
		rest = rest[incl:]
	}
	return frames, nil
}
