package server

import (
	"errors"
	"net"
	"runtime"
	"sync"
	"time"

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
//
// A connection takes a slot only once its first bytes (the ClientHello)
// came, and keeps it at most handshakeSlotTimeout: connections that send
// nothing (scanners, half-open connections after a network cut, a hostile
// client) or stall mid-handshake must not keep every other client out.
func maxHandshakes() int { return 32 * runtime.GOMAXPROCS(0) }

// handshakeSlotTimeout bounds a handshake once it holds a slot (a full
// one takes milliseconds).
const handshakeSlotTimeout = 10 * time.Second

// limitedCreds is TLS transport credentials with at most cap(sem)
// server handshakes in progress.
type limitedCreds struct {
	credentials.TransportCredentials
	*handshakeLimit
}

// handshakeLimit is the bound, shared by the clones of a limitedCreds.
type handshakeLimit struct {
	sem      chan struct{}
	stopping chan struct{}
	stopOnce sync.Once
	mu       sync.Mutex
	idle     map[net.Conn]struct{} // connections waiting for their first bytes
}

func newLimitedCreds(c credentials.TransportCredentials, n int) *limitedCreds {
	return &limitedCreds{TransportCredentials: c, handshakeLimit: &handshakeLimit{
		sem: make(chan struct{}, n), stopping: make(chan struct{}), idle: map[net.Conn]struct{}{},
	}}
}

var errStopping = errors.New("control plane shutting down")

func (c *limitedCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	// Wait for the client's first bytes without a slot (gRPC's connection
	// deadline applies).
	first, err := c.firstBytes(conn)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	select {
	case c.sem <- struct{}{}:
	case <-c.stopping:
		// gRPC's stop waits for every connection still in its handshake:
		// those waiting here are closed instead of handshaking first.
		conn.Close()
		return nil, nil, errStopping
	}
	defer func() { <-c.sem }()
	// gRPC clears the deadline once the handshake is done.
	if err := conn.SetDeadline(time.Now().Add(handshakeSlotTimeout)); err != nil {
		conn.Close()
		return nil, nil, err
	}
	return c.TransportCredentials.ServerHandshake(&prefixConn{Conn: conn, prefix: first})
}

// firstBytes reads what the client sent first; stop closes the
// connections still waiting for it.
func (l *handshakeLimit) firstBytes(conn net.Conn) ([]byte, error) {
	l.mu.Lock()
	select {
	case <-l.stopping:
		l.mu.Unlock()
		return nil, errStopping
	default:
	}
	l.idle[conn] = struct{}{}
	l.mu.Unlock()
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	l.mu.Lock()
	delete(l.idle, conn)
	l.mu.Unlock()
	if n > 0 {
		return buf[:n], nil
	}
	if err == nil {
		err = errors.New("no data from the client")
	}
	return nil, err
}

// stop makes the handshakes still waiting for their turn, or for the
// client's first bytes, fail at once.
func (l *handshakeLimit) stop() {
	l.stopOnce.Do(func() {
		l.mu.Lock()
		close(l.stopping)
		for conn := range l.idle {
			conn.Close()
		}
		l.mu.Unlock()
	})
}

// Clone shares the bound: it is the server's, not the copy's.
func (c *limitedCreds) Clone() credentials.TransportCredentials {
	return &limitedCreds{TransportCredentials: c.TransportCredentials.Clone(), handshakeLimit: c.handshakeLimit}
}

// prefixConn is a connection whose first bytes were read already.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}
