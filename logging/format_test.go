package logging

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestNewFormatHandler(t *testing.T) {
	cases := []struct {
		format, want string
		ok           bool
	}{
		{"json", `"msg":"hello"`, true},
		{"text", "msg=hello", true},
		{"yaml", "", false},
	}
	for _, tc := range cases {
		t.Run(tc.format, func(t *testing.T) {
			var buf bytes.Buffer
			h, err := NewFormatHandler(tc.format, &buf, nil)
			if (err == nil) != tc.ok {
				t.Fatalf("NewFormatHandler(%q) error = %v, want ok=%v", tc.format, err, tc.ok)
			}
			if !tc.ok {
				return
			}
			slog.New(h).Info("hello")
			if !strings.Contains(buf.String(), tc.want) {
				t.Fatalf("output %q lacks %q", buf.String(), tc.want)
			}
		})
	}
}
