package identity_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"tend.dev/tend/agent/identity"
	"tend.dev/tend/controlplane/server"
	"tend.dev/tend/internal/adminconf"
	"tend.dev/tend/internal/pki"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type controlPlane struct {
	srv     *server.Server
	dataDir string
	admin   adminv1.AdminServiceClient
}

// startControlPlane runs a real control plane on a loopback port with an
// admin client built from the admin.conf it writes; both stop at cleanup.
func startControlPlane(t *testing.T) *controlPlane {
	t.Helper()
	dataDir := t.TempDir()
	s, err := server.New(server.Config{DataDir: dataDir, Listen: "127.0.0.1:0", Log: quiet})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})

	conf, err := adminconf.Load(filepath.Join(dataDir, server.AdminConfFile))
	require.NoError(t, err)
	conn, err := conf.Dial()
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return &controlPlane{srv: s, dataDir: dataDir, admin: adminv1.NewAdminServiceClient(conn)}
}

func (cp *controlPlane) token(t *testing.T, uses uint32) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tok, err := cp.admin.CreateToken(ctx, &adminv1.CreateTokenRequest{Uses: uses})
	require.NoError(t, err)
	return tok.GetToken()
}

// agentConn is an mTLS connection made with the identity's TLS config.
func agentConn(t *testing.T, id *identity.Identity, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(id.TLSConfig(addr))))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn
}

// connectHello opens the agent stream, says hello and returns the welcome.
func connectHello(t *testing.T, conn *grpc.ClientConn) *agentv1.Welcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := agentv1.NewAgentServiceClient(conn).Connect(ctx)
	require.NoError(t, err)
	require.NoError(t, stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{
		Version: "test", Labels: map[string]string{"role": "web"},
	}}}))
	resp, err := stream.Recv()
	require.NoError(t, err)
	w := resp.GetWelcome()
	require.NotNil(t, w, "first message must be welcome, got %v", resp)
	require.NoError(t, stream.CloseSend())
	return w
}

func requireMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, want, fi.Mode().Perm(), "%s", path)
}

func requireSameKeys(t *testing.T, want, got []*agentv1.SigningKey) {
	t.Helper()
	require.Len(t, got, len(want))
	for i := range want {
		require.Equal(t, want[i].GetKeyId(), got[i].GetKeyId())
		require.Equal(t, want[i].GetPublicKey(), got[i].GetPublicKey())
	}
}

func TestEnrollLoadConnectRenew(t *testing.T) {
	cp := startControlPlane(t)
	addr := cp.srv.AdminAddr()
	dir := filepath.Join(t.TempDir(), "agent") // Enroll creates it
	ctx := context.Background()

	id, err := identity.Enroll(ctx, dir, identity.EnrollOptions{
		Server: addr, Token: cp.token(t, 1), Name: "web-1",
		Labels: map[string]string{"role": "web"}, Version: "test", Timeout: 10 * time.Second,
	})
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(id.AgentID(), "agt-"), id.AgentID())
	require.Equal(t, "web-1", id.Name())

	// Files and modes: the credential holds a private key.
	requireMode(t, dir, 0o700)
	requireMode(t, filepath.Join(dir, identity.CredFile), 0o600)
	requireMode(t, filepath.Join(dir, identity.MetaFile), 0o600)
	requireMode(t, filepath.Join(dir, identity.CAFile), 0o644)
	caPEM, err := os.ReadFile(filepath.Join(dir, identity.CAFile))
	require.NoError(t, err)
	require.Equal(t, cp.srv.CA().CertPEM, caPEM)

	// The certificate names the agent id with the agent role.
	credPEM, err := os.ReadFile(filepath.Join(dir, identity.CredFile))
	require.NoError(t, err)
	require.Contains(t, string(credPEM), "PRIVATE KEY")
	leaf, err := pki.ParseCertPEM(credPEM)
	require.NoError(t, err)
	who, err := pki.IdentityOf(leaf)
	require.NoError(t, err)
	require.Equal(t, id.AgentID(), who.ID)
	require.Equal(t, pki.RoleAgent, who.Role)
	require.WithinDuration(t, time.Now().Add(server.DefaultAgentCertTTL), id.Expiry(), 10*time.Minute)
	require.True(t, id.RenewAt().After(time.Now()) && id.RenewAt().Before(id.Expiry()))

	// The pinned signing keys are the control plane's.
	sk, created, err := pki.LoadOrCreateSigningKey(filepath.Join(cp.dataDir, pki.SigningKeyFile))
	require.NoError(t, err)
	require.False(t, created)
	requireSameKeys(t, []*agentv1.SigningKey{{KeyId: sk.ID, PublicKey: sk.Pub}}, id.SigningKeys())

	// Load gives back the same identity.
	loaded, err := identity.Load(dir)
	require.NoError(t, err)
	require.Equal(t, id.AgentID(), loaded.AgentID())
	require.Equal(t, id.Name(), loaded.Name())
	require.Equal(t, id.Serial(), loaded.Serial())
	require.Equal(t, id.Expiry(), loaded.Expiry())
	requireSameKeys(t, id.SigningKeys(), loaded.SigningKeys())

	// mTLS with the loaded identity: the control plane knows who we are.
	conn := agentConn(t, loaded, addr)
	w := connectHello(t, conn)
	require.Equal(t, id.AgentID(), w.GetAgentId())
	require.Equal(t, "web-1", w.GetName())

	// Renew over that connection: new serial, new file, same agent.
	oldSerial := loaded.Serial()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	require.NoError(t, loaded.Renew(rctx, conn))
	require.NotEqual(t, oldSerial, loaded.Serial())
	newCred, err := os.ReadFile(filepath.Join(dir, identity.CredFile))
	require.NoError(t, err)
	require.NotEqual(t, credPEM, newCred)
	requireMode(t, filepath.Join(dir, identity.CredFile), 0o600)
	newLeaf, err := pki.ParseCertPEM(newCred)
	require.NoError(t, err)
	who, err = pki.IdentityOf(newLeaf)
	require.NoError(t, err)
	require.Equal(t, id.AgentID(), who.ID)
	require.Equal(t, pki.RoleAgent, who.Role)
	require.Equal(t, loaded.Serial(), newLeaf.SerialNumber.Text(16))

	reloaded, err := identity.Load(dir)
	require.NoError(t, err)
	require.Equal(t, loaded.Serial(), reloaded.Serial())
	require.Equal(t, id.AgentID(), reloaded.AgentID())
	requireSameKeys(t, id.SigningKeys(), reloaded.SigningKeys())

	// The renewed certificate works on a new connection.
	w = connectHello(t, agentConn(t, reloaded, addr))
	require.Equal(t, id.AgentID(), w.GetAgentId())
}

func TestEnrollRefused(t *testing.T) {
	cp := startControlPlane(t)
	addr := cp.srv.AdminAddr()
	ctx := context.Background()

	used := cp.token(t, 1)
	_, err := identity.Enroll(ctx, t.TempDir(), identity.EnrollOptions{Server: addr, Token: used, Name: "first", Timeout: 10 * time.Second})
	require.NoError(t, err)

	good := cp.token(t, 5)
	_, _, pin, err := pki.ParseToken(good)
	require.NoError(t, err)
	other, _, err := pki.NewCA("other")
	require.NoError(t, err)
	wrongPin := strings.TrimSuffix(good, strings.TrimPrefix(pin, "sha256:")) + strings.TrimPrefix(other.Pin(), "sha256:")
	unknown := "zzzzzz.0123456789abcdef." + strings.TrimPrefix(pin, "sha256:")

	tests := []struct {
		name     string
		opts     identity.EnrollOptions
		wantErr  []string
		wantCode codes.Code // codes.OK: not a gRPC status from the server
	}{
		{name: "used-up token", opts: identity.EnrollOptions{Token: used, Name: "second"}, wantErr: []string{"already used"}, wantCode: codes.Unauthenticated},
		{name: "unknown token", opts: identity.EnrollOptions{Token: unknown, Name: "third"}, wantErr: []string{"unknown token"}, wantCode: codes.Unauthenticated},
		{name: "wrong CA pin", opts: identity.EnrollOptions{Token: wrongPin, Name: "fourth"}, wantErr: []string{"does not match the pin"}, wantCode: codes.Unavailable},
		{name: "malformed token", opts: identity.EnrollOptions{Token: "nope", Name: "fifth"}, wantErr: []string{"join token must look like"}},
		{name: "name taken", opts: identity.EnrollOptions{Token: good, Name: "first"}, wantErr: []string{`"first" is already enrolled`}, wantCode: codes.AlreadyExists},
		{name: "bad name", opts: identity.EnrollOptions{Token: good, Name: "-bad name"}, wantErr: []string{"agent name"}, wantCode: codes.InvalidArgument},
		{name: "bad labels", opts: identity.EnrollOptions{Token: good, Name: "sixth", Labels: map[string]string{"bad key": "v"}}, wantErr: []string{"label key"}, wantCode: codes.InvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.opts.Server, tc.opts.Timeout = addr, 10*time.Second
			id, err := identity.Enroll(ctx, dir, tc.opts)
			require.Error(t, err)
			require.Nil(t, id)
			for _, w := range tc.wantErr {
				require.ErrorContains(t, err, w)
			}
			if tc.wantCode != codes.OK {
				require.Equal(t, tc.wantCode, status.Code(err), "%v", err)
			}
			// Nothing half-written: the dir is still not enrolled.
			_, err = identity.Load(dir)
			require.ErrorIs(t, err, identity.ErrNotEnrolled)
		})
	}
}

func TestLoadNotEnrolled(t *testing.T) {
	tests := []struct {
		name string
		dir  func(t *testing.T) string
	}{
		{"empty dir", func(t *testing.T) string { return t.TempDir() }},
		{"missing dir", func(t *testing.T) string { return filepath.Join(t.TempDir(), "nope") }},
		{"metadata without credential", func(t *testing.T) string {
			d := t.TempDir()
			require.NoError(t, os.WriteFile(filepath.Join(d, identity.MetaFile), []byte(`{"agentId":"agt-x"}`), 0o600))
			require.NoError(t, os.WriteFile(filepath.Join(d, identity.CAFile), []byte("x"), 0o644))
			return d
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, err := identity.Load(tc.dir(t))
			require.ErrorIs(t, err, identity.ErrNotEnrolled)
			require.Nil(t, id)
		})
	}
}

func TestServerName(t *testing.T) {
	tests := []struct{ in, want string }{
		{"127.0.0.1:7400", "127.0.0.1"},
		{"cp.example.com:7400", "cp.example.com"},
		{"[::1]:7400", "::1"},
		{"cp.example.com", "cp.example.com"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			require.Equal(t, tc.want, identity.ServerName(tc.in))
		})
	}
}
