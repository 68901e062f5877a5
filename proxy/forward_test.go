package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns two ends of one loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		done <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-done
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

type forwarded struct {
	client, server *net.TCPConn // the applications' ends
	done           chan result
}

type result struct {
	sent, received int64
	err            error
}

// forwardSetup: client app <-> [a  Forward  b] <-> server app.
func forwardSetup(t *testing.T) forwarded {
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	f := forwarded{client: client, server: server, done: make(chan result, 1)}
	go func() {
		s, r, err := Forward(a, b)
		f.done <- result{s, r, err}
	}()
	for _, c := range []*net.TCPConn{client, server} {
		c.SetDeadline(time.Now().Add(10 * time.Second))
	}
	return f
}

func (f forwarded) wait(t *testing.T) result {
	t.Helper()
	select {
	case r := <-f.done:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("Forward did not return")
		return result{}
	}
}

func TestForwardHalfClose(t *testing.T) {
	cases := []struct {
		name        string
		clientFirst bool
	}{
		{"client closes first", true},
		{"server closes first", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := forwardSetup(t)
			first, second := f.client, f.server
			if !tc.clientFirst {
				first, second = f.server, f.client
			}
			first.Write([]byte("one"))
			first.CloseWrite()
			got, err := io.ReadAll(second)
			if err != nil || string(got) != "one" {
				t.Fatalf("read %q, %v; want \"one\" then EOF", got, err)
			}
			// The other direction still works after the FIN.
			second.Write([]byte("two-two"))
			second.CloseWrite()
			got, err = io.ReadAll(first)
			if err != nil || string(got) != "two-two" {
				t.Fatalf("read %q, %v; want \"two-two\" then EOF", got, err)
			}
			r := f.wait(t)
			if r.err != nil {
				t.Fatalf("Forward: %v", r.err)
			}
			wantSent, wantRecv := int64(3), int64(7)
			if !tc.clientFirst {
				wantSent, wantRecv = 7, 3
			}
			if r.sent != wantSent || r.received != wantRecv {
				t.Fatalf("counted sent=%d received=%d, want %d/%d", r.sent, r.received, wantSent, wantRecv)
			}
		})
	}
}

func TestForwardResetPropagates(t *testing.T) {
	cases := []struct {
		name        string
		resetClient bool
	}{
		{"client resets", true},
		{"server resets", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := forwardSetup(t)
			resetter, other := f.server, f.client
			if tc.resetClient {
				resetter, other = f.client, f.server
			}
			resetter.Write([]byte("x"))
			buf := make([]byte, 1)
			if _, err := io.ReadFull(other, buf); err != nil {
				t.Fatal(err)
			}
			resetter.SetLinger(0)
			resetter.Close()
			_, err := io.ReadAll(other)
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("other side read error %v, want ECONNRESET", err)
			}
			if r := f.wait(t); r.err == nil {
				t.Fatal("Forward reported no error for a reset")
			}
		})
	}
}

func TestForwardBulk(t *testing.T) {
	f := forwardSetup(t)
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	go func() {
		f.client.Write(payload)
		f.client.CloseWrite()
	}()
	got, err := io.ReadAll(f.server)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("server got %d bytes (err %v), want %d identical", len(got), err, len(payload))
	}
	f.server.CloseWrite()
	if r := f.wait(t); r.sent != int64(len(payload)) || r.err != nil {
		t.Fatalf("sent=%d err=%v", r.sent, r.err)
	}
}
