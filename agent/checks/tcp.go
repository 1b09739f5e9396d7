package checks

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// The tcp check: can a TCP connection be opened to host:port within the
// timeout. The connection is closed at once; nothing is sent.

func init() { Register("tcp", newTCPCheck) }

type tcpCheck struct {
	address string
}

func newTCPCheck(spec *agentv1.CheckSpec) (Checker, error) {
	addr := spec.GetTcp().GetAddress()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("tcp check: address %s must be host:port (e.g. 127.0.0.1:8080 or [::1]:8080): %v", quote(addr), err)
	}
	if host == "" {
		return nil, fmt.Errorf("tcp check: address %s has no host; write 127.0.0.1:%s to check this host", quote(addr), port)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return nil, fmt.Errorf("tcp check: address %s: port %s must be a number from 1 to 65535", quote(addr), quote(port))
	}
	return &tcpCheck{address: addr}, nil
}

func (c *tcpCheck) Check(ctx context.Context) Result {
	var d net.Dialer
	start := time.Now()
	conn, err := d.DialContext(ctx, "tcp", c.address)
	took := time.Since(start)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return result(statusCritical, nil, "connect to %s timed out after %v", c.address, timeoutOf(ctx, start))
		}
		return result(statusCritical, nil, "connect to %s failed: %v", c.address, err)
	}
	_ = conn.Close()
	return result(statusOK, map[string]float64{"connect_seconds": took.Seconds()},
		"connected to %s in %v", c.address, took.Round(time.Microsecond))
}
