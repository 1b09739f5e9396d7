package checks

import (
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestTCPFactoryValidation(t *testing.T) {
	tests := []struct{ addr, wantErr string }{
		{"127.0.0.1", "must be host:port"},
		{"", "must be host:port"},
		{":8080", "has no host"},
		{"127.0.0.1:http", "must be a number"},
		{"127.0.0.1:0", "from 1 to 65535"},
		{"127.0.0.1:70000", "from 1 to 65535"},
		{"127.0.0.1:8080", ""},
		{"[::1]:8080", ""},
		{"localhost:22", ""},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			_, err := New(tcpSpec(tt.addr))
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}

func TestTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()

	// A port that was just free: listen, note it, close.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closedAddr := closed.Addr().String()
	require.NoError(t, closed.Close())

	open := ln.Addr().String()
	res := run(t, mustNew(t, tcpSpec(open)), 2*time.Second)
	require.Equal(t, statusOK, res.Status, res.Output)
	require.Contains(t, res.Output, "connected to "+open)
	require.Contains(t, res.Metrics, "connect_seconds")
	require.Greater(t, res.Metrics["connect_seconds"], 0.0)

	res = run(t, mustNew(t, tcpSpec(closedAddr)), 2*time.Second)
	require.Equal(t, statusCritical, res.Status, res.Output)
	require.Contains(t, res.Output, "connect to "+closedAddr+" failed")
	require.Contains(t, res.Output, "refused")
}

// TestTCPTimeout: a dial that runs out of time is CRITICAL "timed out".
func TestTCPTimeout(t *testing.T) {
	c := mustNew(t, tcpSpec("127.0.0.1:1"))
	// An already-expired context is the deterministic way to hit the
	// deadline without a route that drops packets.
	res := run(t, c, 0)
	require.Equal(t, statusCritical, res.Status, res.Output)
	require.Contains(t, res.Output, "timed out")
}
