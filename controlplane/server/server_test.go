package server

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/durationpb"

	"tend.dev/tend/agent"
	"tend.dev/tend/internal/adminconf"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// testServer starts a control plane on a loopback port and returns it with
// an admin client; both are stopped at cleanup.
func testServer(t testing.TB, dataDir string, opts ...func(*Config)) (*Server, adminv1.AdminServiceClient) {
	t.Helper()
	cfg := Config{DataDir: dataDir, Listen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Log: quiet}
	for _, o := range opts {
		o(&cfg)
	}
	s, err := New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	conf, err := adminconf.Load(filepath.Join(dataDir, AdminConfFile))
	require.NoError(t, err)
	conn, err := conf.Dial()
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return s, adminv1.NewAdminServiceClient(conn)
}

func runAgent(t *testing.T, s *Server, name, token string, labels map[string]string, checks []*agentv1.CheckSpec) context.CancelFunc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a, err := agent.New(ctx, agent.Config{
		Server: s.AdminAddr(), DataDir: t.TempDir(), Name: name, Labels: labels, Token: token,
		LocalChecks: checks, MaxBackoff: time.Second, Log: quiet,
	})
	require.NoError(t, err)
	done := make(chan struct{})
	go func() { _ = a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return cancel
}

// In-process: enroll, stream results over mTLS, see them in the admin API,
// push a policy check to matching agents only.
func TestInProcessFleet(t *testing.T) {
	s, admin := testServer(t, t.TempDir())
	ctx := context.Background()
	tok, err := admin.CreateToken(ctx, &adminv1.CreateTokenRequest{Uses: 2})
	require.NoError(t, err)

	local := []*agentv1.CheckSpec{{
		Id: "local/true", Interval: durationpb.New(time.Second), Timeout: durationpb.New(time.Second),
		Check: &agentv1.CheckSpec_Command{Command: &agentv1.CommandCheck{Argv: []string{"/bin/true"}}},
	}}
	runAgent(t, s, "web-1", tok.GetToken(), map[string]string{"role": "web"}, local)
	runAgent(t, s, "db-1", tok.GetToken(), map[string]string{"role": "db"}, local)

	require.Eventually(t, func() bool {
		r, err := admin.ListAgents(ctx, &adminv1.ListAgentsRequest{})
		if err != nil || len(r.GetAgents()) != 2 {
			return false
		}
		for _, a := range r.GetAgents() {
			if a.GetStatus() != adminv1.AgentStatus_AGENT_STATUS_CONNECTED || a.GetResultsStored() < 2 {
				return false
			}
		}
		return true
	}, 15*time.Second, 50*time.Millisecond)

	policy := `apiVersion: tend.dev/v1
kind: Policy
metadata: {name: cp-port}
spec:
  selector: {matchLabels: {role: web}}
  check:
    type: tcp
    interval: 1s
    tcp: {address: "` + s.AdminAddr() + `"}
`
	resp, err := admin.ApplyPolicies(ctx, &adminv1.ApplyPoliciesRequest{Filename: "p.yaml", Content: []byte(policy)})
	require.NoError(t, err)
	require.Equal(t, "created", resp.GetChanges()[0].GetAction())

	require.Eventually(t, func() bool {
		r, err := admin.ListChecks(ctx, &adminv1.ListChecksRequest{})
		if err != nil {
			return false
		}
		for _, c := range r.GetChecks() {
			if c.GetCheckId() == "cp-port" && c.GetAgentName() == "web-1" && c.GetLast().GetStatus() == agentv1.CheckStatus_CHECK_STATUS_OK {
				return true
			}
		}
		return false
	}, 15*time.Second, 50*time.Millisecond)
	r, err := admin.ListChecks(ctx, &adminv1.ListChecksRequest{Agent: "db-1"})
	require.NoError(t, err)
	for _, c := range r.GetChecks() {
		require.NotEqual(t, "cp-port", c.GetCheckId(), "selector role=web must not reach db-1")
	}

	gp, err := admin.GetPolicy(ctx, &adminv1.GetPolicyRequest{Name: "cp-port"})
	require.NoError(t, err)
	require.Equal(t, []string{"web-1"}, gp.GetMatchedAgents())
}

// Revoking an agent closes its stream and it can never connect again with
// its certificate.
func TestRevokedAgentIsRefused(t *testing.T) {
	s, admin := testServer(t, t.TempDir())
	ctx := context.Background()
	tok, err := admin.CreateToken(ctx, &adminv1.CreateTokenRequest{})
	require.NoError(t, err)
	runAgent(t, s, "web-1", tok.GetToken(), map[string]string{"role": "web"}, nil)
	require.Eventually(t, func() bool {
		r, err := admin.ListAgents(ctx, &adminv1.ListAgentsRequest{})
		return err == nil && len(r.GetAgents()) == 1 && r.GetAgents()[0].GetStatus() == adminv1.AgentStatus_AGENT_STATUS_CONNECTED
	}, 15*time.Second, 50*time.Millisecond)
	_, err = admin.DeleteAgent(ctx, &adminv1.DeleteAgentRequest{Name: "web-1"})
	require.NoError(t, err)
	// It keeps retrying and is refused every time: never connected again.
	time.Sleep(2 * time.Second)
	r, err := admin.ListAgents(ctx, &adminv1.ListAgentsRequest{})
	require.NoError(t, err)
	require.Empty(t, r.GetAgents(), "revoked agents are hidden by default")
	r, err = admin.ListAgents(ctx, &adminv1.ListAgentsRequest{IncludeRevoked: true})
	require.NoError(t, err)
	require.True(t, r.GetAgents()[0].GetRevoked())
	require.Equal(t, adminv1.AgentStatus_AGENT_STATUS_DOWN, r.GetAgents()[0].GetStatus())
}

// Agents renew their short-lived certificate at two thirds of its lifetime
// and keep streaming with the new one.
func TestAgentRenewsCertificate(t *testing.T) {
	dir := t.TempDir()
	s, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0", Log: quiet, AgentCertTTL: 4 * time.Second})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	conf, err := adminconf.Load(filepath.Join(dir, AdminConfFile))
	require.NoError(t, err)
	conn, err := conf.Dial()
	require.NoError(t, err)
	defer conn.Close()
	admin := adminv1.NewAdminServiceClient(conn)
	tok, err := admin.CreateToken(ctx, &adminv1.CreateTokenRequest{})
	require.NoError(t, err)

	agentDir := t.TempDir()
	actx, acancel := context.WithCancel(context.Background())
	a, err := agent.New(actx, agent.Config{Server: s.AdminAddr(), DataDir: agentDir, Name: "r-1", Token: tok.GetToken(), MaxBackoff: time.Second, Log: quiet})
	require.NoError(t, err)
	adone := make(chan struct{})
	go func() { _ = a.Run(actx); close(adone) }()
	defer func() { acancel(); <-adone }()

	first := a.CertSerial()
	require.Eventually(t, func() bool { return a.CertSerial() != first }, 15*time.Second, 50*time.Millisecond, "certificate never renewed")
	second := a.CertSerial()
	require.Eventually(t, func() bool { return a.CertSerial() != second }, 15*time.Second, 50*time.Millisecond, "renewed certificate never renewed again")
	// Past the first certificate's expiry the agent is still connected.
	require.Eventually(t, func() bool {
		r, err := admin.ListAgents(ctx, &adminv1.ListAgentsRequest{})
		return err == nil && r.GetAgents()[0].GetStatus() == adminv1.AgentStatus_AGENT_STATUS_CONNECTED
	}, 10*time.Second, 50*time.Millisecond)
}

// A host off for longer than its certificate's lifetime comes back with a
// new token: it enrolls again under a new id, takes its name back, keeps
// its outbox, and the old identity is revoked.
func TestExpiredAgentEnrollsAgainAndKeepsItsName(t *testing.T) {
	s, admin := testServer(t, t.TempDir(), func(c *Config) { c.AgentCertTTL = 2 * time.Second })
	ctx := context.Background()
	tok, err := admin.CreateToken(ctx, &adminv1.CreateTokenRequest{Uses: 1})
	require.NoError(t, err)
	dataDir := t.TempDir()
	a, err := agent.New(ctx, agent.Config{Server: s.AdminAddr(), DataDir: dataDir, Name: "web-1", Token: tok.GetToken(), Log: quiet})
	require.NoError(t, err)
	oldID := a.ID()
	// The agent is "off": it never runs, so it never renews.
	require.NoError(t, a.Close())
	time.Sleep(2500 * time.Millisecond)

	_, err = agent.New(ctx, agent.Config{Server: s.AdminAddr(), DataDir: dataDir, Name: "web-1", Log: quiet})
	require.ErrorContains(t, err, "certificate expired")

	tok2, err := admin.CreateToken(ctx, &adminv1.CreateTokenRequest{Uses: 1})
	require.NoError(t, err)
	a2, err := agent.New(ctx, agent.Config{Server: s.AdminAddr(), DataDir: dataDir, Name: "web-1", Token: tok2.GetToken(), Log: quiet})
	require.NoError(t, err)
	require.NotEqual(t, oldID, a2.ID(), "a new identity: ids are never reused")
	require.NoError(t, a2.Close())

	r, err := admin.ListAgents(ctx, &adminv1.ListAgentsRequest{IncludeRevoked: true})
	require.NoError(t, err)
	byID := map[string]*adminv1.Agent{}
	for _, ag := range r.GetAgents() {
		byID[ag.GetId()] = ag
	}
	require.True(t, byID[oldID].GetRevoked(), "the expired identity is revoked")
	require.Equal(t, "web-1", byID[a2.ID()].GetName())
	require.False(t, byID[a2.ID()].GetRevoked())
}
