package server

import (
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestIdleConnectionsDoNotStarveHandshakes: TCP connections that never send
// a ClientHello (a scanner, half-open connections after a network cut, a
// hostile client) must not keep every other client from handshaking. With
// the handshake bound and no handshake deadline shorter than gRPC's 120 s,
// maxHandshakes() idle connections hold every slot.
func TestIdleConnectionsDoNotStarveHandshakes(t *testing.T) {
	s, _ := testServer(t, t.TempDir())
	addr := s.AdminAddr()
	for range maxHandshakes() {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		defer c.Close()
	}
	time.Sleep(200 * time.Millisecond) // let the server accept them
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}, ServerName: "localhost"})
	if conn != nil {
		conn.Close()
	}
	require.NoError(t, err, "a TLS handshake behind %d idle connections", maxHandshakes())
}

// TestShutdownClosesIdleConnections: connections that never sent a
// ClientHello do not hold the shutdown up for gRPC's 120 s connection
// timeout.
func TestShutdownClosesIdleConnections(t *testing.T) {
	cfg := Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Log: quiet}
	s, _, stop := startStop(t, cfg)
	for range 3 {
		c, err := net.Dial("tcp", s.AdminAddr())
		require.NoError(t, err)
		defer c.Close()
	}
	time.Sleep(200 * time.Millisecond) // let the server accept them
	done := make(chan struct{})
	go func() { stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("shutdown still waits for connections that sent nothing")
	}
}
