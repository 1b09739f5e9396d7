package server

import (
	"errors"
	"net"
	"runtime"
	"sync"

	"google.golang.org/grpc/credentials"
)

// maxHandshakes bounds the TLS handshakes the server runs at once. In a
// reconnect storm (thousands of agents dialing after a restart, or a
// fleet ramping up) every accepted connection's handshake is runnable at
// once, and the streams already up queue behind them for the CPU: their
// messages are read seconds late, and agents that did send a heartbeat are
// marked down and reconnect, which makes the storm worse. Connections
// beyond the bound wait, without using the CPU, until a handshake
// finishes (gRPC's connection timeout, 120 s, still applies).
func maxHandshakes() int { return 32 * runtime.GOMAXPROCS(0) }

// limitedCreds is TLS transport credentials with at most cap(sem)
// server handshakes in progress.
type limitedCreds struct {
	credentials.TransportCredentials
	sem      chan struct{}
	stopping chan struct{}
	stopOnce *sync.Once
}

func newLimitedCreds(c credentials.TransportCredentials, n int) *limitedCreds {
	return &limitedCreds{TransportCredentials: c, sem: make(chan struct{}, n), stopping: make(chan struct{}), stopOnce: new(sync.Once)}
}

var errStopping = errors.New("control plane shutting down")

func (c *limitedCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	select {
	case c.sem <- struct{}{}:
	case <-c.stopping:
		// gRPC's stop waits for every connection still in its handshake:
		// those waiting here are closed instead of handshaking first.
		conn.Close()
		return nil, nil, errStopping
	}
	defer func() { <-c.sem }()
	return c.TransportCredentials.ServerHandshake(conn)
}

// stop makes the handshakes still waiting for their turn fail at once.
func (c *limitedCreds) stop() { c.stopOnce.Do(func() { close(c.stopping) }) }

// Clone shares the bound: it is the server's, not the copy's.
func (c *limitedCreds) Clone() credentials.TransportCredentials {
	return &limitedCreds{TransportCredentials: c.TransportCredentials.Clone(), sem: c.sem, stopping: c.stopping, stopOnce: c.stopOnce}
}
