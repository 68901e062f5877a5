package logging

import (
	"fmt"
	"io"
	"log/slog"
)

// NewFormatHandler returns slog's JSON or text handler writing to w, for a
// binary's --log-format flag.
func NewFormatHandler(format string, w io.Writer, opts *slog.HandlerOptions) (slog.Handler, error) {
	switch format {
	case "json":
		return slog.NewJSONHandler(w, opts), nil
	case "text":
		return slog.NewTextHandler(w, opts), nil
	}
	return nil, fmt.Errorf("log format %q is not json or text", format)
}
