package server

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"tend.dev/tend/agent/identity"
	"tend.dev/tend/internal/adminconf"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// startStop runs a control plane until the returned stop is called.
func startStop(t *testing.T, cfg Config) (*Server, adminv1.AdminServiceClient, func()) {
	t.Helper()
	s, err := New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	conf, err := adminconf.Load(filepath.Join(cfg.DataDir, AdminConfFile))
	require.NoError(t, err)
	conn, err := conf.Dial()
	require.NoError(t, err)
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		conn.Close()
		cancel()
		require.NoError(t, <-done)
	}
	t.Cleanup(stop)
	return s, adminv1.NewAdminServiceClient(conn), stop
}

// connectAgent opens one connection with the identity's TLS config (its
// session cache) and one agent stream; it reports whether TLS resumed a
// session, and the stream's first answer: nil for a Welcome.
func connectAgent(t *testing.T, id *identity.Identity, addr string) (resumed bool, err error) {
	t.Helper()
	conf := id.TLSConfig(addr)
	conf.VerifyConnection = func(cs tls.ConnectionState) error {
		resumed = cs.DidResume
		return nil
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	require.NoError(t, err)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := agentv1.NewAgentServiceClient(conn).Connect(ctx)
	if err != nil {
		return resumed, err
	}
	if err := st.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{Version: "test"}}}); err != nil {
		_, err = st.Recv()
		return resumed, err
	}
	m, err := st.Recv()
	if err != nil {
		return resumed, err
	}
	require.NotNil(t, m.GetWelcome(), "first message: %v", m)
	return resumed, nil
}

// Agents resume their TLS sessions, also after a control-plane restart
// (the ticket keys are in the data dir); a resumed session of a revoked
// agent is refused like a full handshake.
func TestSessionResumptionSurvivesRestartAndRevocationHolds(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{DataDir: dir, Listen: "127.0.0.1:0", Log: quiet}
	s, admin, stop := startStop(t, cfg)
	ctx := context.Background()
	tok, err := admin.CreateToken(ctx, &adminv1.CreateTokenRequest{})
	require.NoError(t, err)
	id, err := identity.Enroll(ctx, t.TempDir(), identity.EnrollOptions{Server: s.AdminAddr(), Token: tok.GetToken(), Name: "resume-1"})
	require.NoError(t, err)

	resumed, err := connectAgent(t, id, s.AdminAddr())
	require.NoError(t, err)
	require.False(t, resumed, "first connection: full handshake")
	resumed, err = connectAgent(t, id, s.AdminAddr())
	require.NoError(t, err)
	require.True(t, resumed, "second connection resumes")

	fi, err := os.Stat(filepath.Join(dir, TicketKeysFile))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	// Restart on the same data dir: the ticket still works.
	stop()
	s, admin, _ = startStop(t, cfg)
	resumed, err = connectAgent(t, id, s.AdminAddr())
	require.NoError(t, err)
	require.True(t, resumed, "resumes after a restart")

	_, err = admin.DeleteAgent(ctx, &adminv1.DeleteAgentRequest{Name: "resume-1"})
	require.NoError(t, err)
	resumed, err = connectAgent(t, id, s.AdminAddr())
	require.True(t, resumed)
	require.Equal(t, codes.PermissionDenied, status.Code(err), "a resumed session of a revoked agent: %v", err)
}

// A resumed session never outlives the certificate of its full handshake.
func TestResumedSessionOfExpiredAgentIsRefused(t *testing.T) {
	dir := t.TempDir()
	s, admin, _ := startStop(t, Config{DataDir: dir, Listen: "127.0.0.1:0", Log: quiet, AgentCertTTL: 3 * time.Second})
	ctx := context.Background()
	tok, err := admin.CreateToken(ctx, &adminv1.CreateTokenRequest{})
	require.NoError(t, err)
	id, err := identity.Enroll(ctx, t.TempDir(), identity.EnrollOptions{Server: s.AdminAddr(), Token: tok.GetToken(), Name: "expire-1"})
	require.NoError(t, err)
	_, err = connectAgent(t, id, s.AdminAddr())
	require.NoError(t, err)
	resumed, err := connectAgent(t, id, s.AdminAddr())
	require.NoError(t, err)
	require.True(t, resumed)

	time.Sleep(time.Until(id.Expiry()) + 100*time.Millisecond)
	_, err = connectAgent(t, id, s.AdminAddr())
	require.Error(t, err, "a session of an expired certificate must not be accepted")
	require.Contains(t, []codes.Code{codes.Unauthenticated, codes.Unavailable}, status.Code(err), "%v", err)
}

// The key file: rotated, old keys kept for a while, bad files refused with
// the path in the error.
func TestTicketKeysRotateAndExpire(t *testing.T) {
	dir := t.TempDir()
	base := &tls.Config{MinVersion: tls.VersionTLS13}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	k, err := openTicketKeys(dir, base, t0)
	require.NoError(t, err)
	require.Len(t, k.keys, 1)
	changed, err := k.rotate(t0.Add(time.Hour), false)
	require.NoError(t, err)
	require.False(t, changed)
	for i := 1; i <= 8; i++ {
		_, err = k.rotate(t0.Add(time.Duration(i)*ticketKeyRotate), false)
		require.NoError(t, err)
	}
	// 32 h: keys younger than 24 h are kept, newest first.
	require.Len(t, k.keys, int(ticketKeyKeep/ticketKeyRotate))
	require.Equal(t, t0.Add(8*ticketKeyRotate), k.keys[0].Created)

	// Reopened from the file: the same keys.
	again, err := openTicketKeys(dir, base, t0.Add(8*ticketKeyRotate+time.Minute))
	require.NoError(t, err)
	require.Equal(t, k.keys, again.keys)

	require.NoError(t, os.WriteFile(filepath.Join(dir, TicketKeysFile), []byte("not json"), 0o600))
	_, err = openTicketKeys(dir, base, t0)
	require.ErrorContains(t, err, TicketKeysFile)
	b, _ := json.Marshal([]ticketKey{{Created: t0, Key: []byte("short")}})
	require.NoError(t, os.WriteFile(filepath.Join(dir, TicketKeysFile), b, 0o600))
	_, err = openTicketKeys(dir, base, t0)
	require.ErrorContains(t, err, "32-byte key")
}

// handshakeProbe counts the server handshakes in progress.
type handshakeProbe struct {
	credentials.TransportCredentials
	mu        sync.Mutex
	now, most int
	release   chan struct{}
}

func (p *handshakeProbe) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	p.mu.Lock()
	p.now++
	p.most = max(p.most, p.now)
	p.mu.Unlock()
	<-p.release
	p.mu.Lock()
	p.now--
	p.mu.Unlock()
	return conn, nil, nil
}

func (p *handshakeProbe) Clone() credentials.TransportCredentials { return p }

// helloConn is a connection whose client sent its first bytes (a handshake
// takes a slot only then).
func helloConn(t *testing.T) net.Conn {
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	go func() { _, _ = b.Write([]byte{0x16}) }()
	return a
}

// At most the bound of handshakes run at once; the others wait and all
// complete.
func TestHandshakesAreBounded(t *testing.T) {
	probe := &handshakeProbe{release: make(chan struct{})}
	c := newLimitedCreds(probe, 3).Clone()
	var wg sync.WaitGroup
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, err := c.ServerHandshake(helloConn(t))
			require.NoError(t, err)
		}()
	}
	require.Eventually(t, func() bool {
		probe.mu.Lock()
		defer probe.mu.Unlock()
		return probe.now == 3
	}, 5*time.Second, time.Millisecond)
	close(probe.release)
	wg.Wait()
	require.Equal(t, 3, probe.most)

	// Once stopping, a handshake waiting for its turn fails at once.
	probe2 := &handshakeProbe{release: make(chan struct{})}
	lc := newLimitedCreds(probe2, 1)
	conn := helloConn(t)
	go func() { _, _, _ = lc.ServerHandshake(conn) }() // takes the one slot
	require.Eventually(t, func() bool {
		probe2.mu.Lock()
		defer probe2.mu.Unlock()
		return probe2.now == 1
	}, 5*time.Second, time.Millisecond)
	lc.stop()
	a, b := net.Pipe()
	defer b.Close()
	_, _, err := lc.Clone().ServerHandshake(a)
	require.ErrorIs(t, err, errStopping)
	close(probe2.release)
}
