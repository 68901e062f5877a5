package testbed

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestFrames(t *testing.T) {
	ts := time.Unix(1700000000, 123456000)
	big := bytes.Repeat([]byte{'x'}, 10)
	file := pcapHeader()
	file = append(file, pcapRecord(ts, []byte("first"), 5)...)
	file = append(file, pcapRecord(ts, big[:4], 10)...) // truncated capture: 4 of 10 bytes
	file = append(file, pcapRecord(ts, nil, 0)...)

	tests := []struct {
		name    string
		in      []byte
		want    [][]byte
		wantErr string
	}{
		{"three frames", file, [][]byte{[]byte("first"), big[:4], {}}, ""},
		{"header only", pcapHeader(), nil, ""},
		{"not pcap", []byte("hello, this is not a capture file"), nil, "not a little-endian pcap"},
		{"truncated record header", file[:pcapHeaderLen+3], nil, "truncated record header"},
		{"truncated frame", file[:pcapHeaderLen+pcapRecHeaderLen+2], nil, "truncated frame"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Frames(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Frames() error = %v, want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Frames() = %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Frames() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}
