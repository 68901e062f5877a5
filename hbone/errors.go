package hbone

import (
	"errors"
	"fmt"

	"golang.org/x/net/http2"
)

var (
	// ErrReset matches (errors.Is) every error returned by a stream whose peer
	// reset it, or whose connection died: the tunnel equivalent of a TCP RST.
	ErrReset = errors.New("hbone: stream reset")
	// ErrPoolClosed is returned by Connect after Close.
	ErrPoolClosed = errors.New("hbone: pool closed")
	// ErrServerClosed is returned by Serve after Shutdown.
	ErrServerClosed = errors.New("hbone: server closed")
)

// StatusError is returned by Connect when the server answers the CONNECT with
// anything but 200.
type StatusError struct {
	Code int
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("hbone: CONNECT answered with status %d", e.Code)
}

// ResetError says why a stream ended abruptly. It matches ErrReset.
type ResetError struct {
	// Code is the RST_STREAM (or GOAWAY) error code.
	Code http2.ErrCode
	// Remote is true when the peer reset the stream.
	Remote bool
	// Cause is the connection failure that ended the stream, if any.
	Cause error
}

func (e *ResetError) Error() string {
	switch {
	case e.Cause != nil:
		return fmt.Sprintf("hbone: stream reset: connection: %v", e.Cause)
	case e.Remote:
		return fmt.Sprintf("hbone: stream reset by peer: %v", e.Code)
	default:
		return fmt.Sprintf("hbone: stream reset locally: %v", e.Code)
	}
}

func (e *ResetError) Is(target error) bool { return target == ErrReset }

func (e *ResetError) Unwrap() error { return e.Cause }
