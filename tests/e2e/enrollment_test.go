package e2e

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"tend.dev/tend/internal/pki"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// An agent that cannot enroll exits non-zero with a message that says why.
func requireAgentRefused(t *testing.T, a *agentProc, want string) {
	t.Helper()
	err := a.wait(30 * time.Second)
	require.Error(t, err, "agent should have exited with an error")
	require.Contains(t, a.output(), want)
}

func TestEnrollmentRefusals(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), "")

	t.Run("valid token enrolls and connects", func(t *testing.T) {
		startAgent(t, cp, "good-1", t.TempDir(), cp.token(t))
		cp.waitAgentStatus(t, "good-1", "connected", 20*time.Second)
	})

	t.Run("reused token", func(t *testing.T) {
		tok := cp.token(t, "--uses", "1")
		startAgent(t, cp, "reuse-1", t.TempDir(), tok)
		cp.waitAgentStatus(t, "reuse-1", "connected", 20*time.Second)
		second := startAgent(t, cp, "reuse-2", t.TempDir(), tok)
		requireAgentRefused(t, second, "already used")
	})

	t.Run("counted token allows exactly its uses", func(t *testing.T) {
		tok := cp.token(t, "--uses", "2")
		startAgent(t, cp, "count-1", t.TempDir(), tok)
		startAgent(t, cp, "count-2", t.TempDir(), tok)
		cp.waitAgentStatus(t, "count-1", "connected", 20*time.Second)
		cp.waitAgentStatus(t, "count-2", "connected", 20*time.Second)
		requireAgentRefused(t, startAgent(t, cp, "count-3", t.TempDir(), tok), "already used")
	})

	t.Run("expired token", func(t *testing.T) {
		tok := cp.token(t, "--ttl", "1s")
		time.Sleep(1500 * time.Millisecond)
		requireAgentRefused(t, startAgent(t, cp, "late-1", t.TempDir(), tok), "expired")
	})

	t.Run("unknown token", func(t *testing.T) {
		real := cp.token(t)
		parts := strings.Split(real, ".")
		forged := "zzzzzz.0123456789abcdef." + parts[2]
		requireAgentRefused(t, startAgent(t, cp, "forged-1", t.TempDir(), forged), "unknown token")
	})

	t.Run("token pinned to another control plane", func(t *testing.T) {
		other, _, err := pki.NewCA("other")
		require.NoError(t, err)
		real := cp.token(t)
		parts := strings.Split(real, ".")
		wrongPin := pki.FormatToken(parts[0], parts[1], other.Pin())
		requireAgentRefused(t, startAgent(t, cp, "pin-1", t.TempDir(), wrongPin), "does not match the pin")
	})

	t.Run("malformed token", func(t *testing.T) {
		requireAgentRefused(t, startAgent(t, cp, "bad-1", t.TempDir(), "nonsense"), "join token must look like")
	})

	t.Run("no client certificate: no stream, no admin API", func(t *testing.T) {
		ca, err := pki.ParseCertPEM(mustRead(t, cp.dataDir+"/ca.crt"))
		require.NoError(t, err)
		pool := caPool(ca)
		conn, err := grpc.NewClient(cp.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})))
		require.NoError(t, err)
		defer conn.Close()
		ctx := ctxTimeout(t, 10*time.Second)
		err = openStream(ctx, conn)
		require.Equal(t, codes.Unauthenticated, status.Code(err), "got %v", err)
		_, err = adminv1.NewAdminServiceClient(conn).ListAgents(ctx, &adminv1.ListAgentsRequest{})
		require.Equal(t, codes.Unauthenticated, status.Code(err), "got %v", err)
	})

	t.Run("certificate from another CA", func(t *testing.T) {
		other, _, err := pki.NewCA("evil")
		require.NoError(t, err)
		certPEM, keyPEM, err := other.IssueClientCert("agt-evil", pki.RoleAgent, time.Hour)
		require.NoError(t, err)
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		require.NoError(t, err)
		ca, err := pki.ParseCertPEM(mustRead(t, cp.dataDir+"/ca.crt"))
		require.NoError(t, err)
		conn, err := grpc.NewClient(cp.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			RootCAs: caPool(ca), ServerName: "127.0.0.1", Certificates: []tls.Certificate{cert},
		})))
		require.NoError(t, err)
		defer conn.Close()
		ctx := ctxTimeout(t, 10*time.Second)
		err = openStream(ctx, conn)
		require.Error(t, err)
		require.Contains(t, []codes.Code{codes.Unavailable, codes.Unauthenticated}, status.Code(err), "got %v", err)
	})

	t.Run("expired agent certificate", func(t *testing.T) {
		ca, err := pki.ParseCA(mustRead(t, cp.dataDir+"/ca.crt"), mustRead(t, cp.dataDir+"/ca.key"))
		require.NoError(t, err)
		certPEM, keyPEM, err := ca.IssueClientCert(cp.agents(t)["good-1"].ID, pki.RoleAgent, -time.Minute)
		require.NoError(t, err)
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		require.NoError(t, err)
		conn, err := grpc.NewClient(cp.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			RootCAs: ca.Pool(), ServerName: "127.0.0.1", Certificates: []tls.Certificate{cert},
		})))
		require.NoError(t, err)
		defer conn.Close()
		ctx := ctxTimeout(t, 10*time.Second)
		err = openStream(ctx, conn)
		require.Error(t, err)
	})
}

// openStream opens the agent stream, says hello and waits for the answer:
// the error says whether a stream could be had at all.
func openStream(ctx context.Context, conn *grpc.ClientConn) error {
	stream, err := agentv1.NewAgentServiceClient(conn).Connect(ctx)
	if err != nil {
		return err
	}
	_ = stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{}}})
	_, err = stream.Recv()
	return err
}
