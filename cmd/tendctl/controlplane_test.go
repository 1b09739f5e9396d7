package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"tend.dev/tend/controlplane/server"
)

// TestRealControlPlane runs the credential and key commands against a real
// in-process control plane (its handlers, CA, access policy, revocation
// list and key ring), as an operator would on a fresh install.
func TestRealControlPlane(t *testing.T) {
	dir := t.TempDir()
	s, err := server.New(server.Config{DataDir: dir, Listen: "127.0.0.1:0", Log: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })

	adminConf := filepath.Join(dir, server.AdminConfFile)
	admin := func(args ...string) cliResult {
		t.Helper()
		return runCLI(t, nil, "", append([]string{"--config", adminConf}, args...)...)
	}
	viewerConf := filepath.Join(t.TempDir(), "viewer.conf")
	viewer := func(args ...string) cliResult {
		t.Helper()
		return runCLI(t, nil, "", append([]string{"--config", viewerConf}, args...)...)
	}

	r := admin("credential", "create", "ci-bot", "--role", "viewer", "--out", viewerConf)
	require.Equal(t, 0, r.code, r.stderr)
	require.Regexp(t, `^credential/ci-bot created: role viewer, serial [0-9a-f]+, expires \S+ \(in 30d\)\n`, r.stdout)

	r = admin("get", "credentials", "-o", "json")
	require.Equal(t, 0, r.code, r.stderr)
	var creds []map[string]any
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &creds))
	var names []string
	for _, c := range creds {
		names = append(names, c["name"].(string)+"/"+c["role"].(string))
	}
	require.ElementsMatch(t, []string{"admin/admin", "ci-bot/viewer"}, names)

	// The viewer reads, and is refused what needs another role.
	r = viewer("get", "agents", "-o", "json")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "[]\n", r.stdout)
	r = viewer("apply", "-f", exampleFile("web-nginx-down.yaml"))
	require.Equal(t, 1, r.code)
	require.Equal(t, "error: permission denied: ApplyPolicies needs the admin role, and the credential in "+viewerConf+
		" has role viewer (an admin can issue another: tendctl credential create NAME --role ROLE --out FILE)\n", r.stderr)
	r = viewer("approve", "task", "task-1")
	require.Equal(t, 1, r.code)
	require.Equal(t, "error: permission denied: ApproveTask needs the operator or admin role, and the credential in "+viewerConf+
		" has role viewer (an admin can issue another: tendctl credential create NAME --role ROLE --out FILE)\n", r.stderr)

	// The admin may apply; approving an unknown task is a plain not found.
	r = admin("apply", "-f", exampleFile("web-nginx-down.yaml"))
	require.Equal(t, 0, r.code, r.stderr)
	r = admin("approve", "task", "task-1")
	require.Equal(t, 1, r.code)
	require.NotContains(t, r.stderr, "permission denied")
	require.Contains(t, r.stderr, "not found")
	r = viewer("describe", "policy", "web-nginx-down")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "Safety:\n  Circuit breaker:  closed: 0 failed attempts counted in the last 1h (opens at 5)\n  Correlated hold:  none\n")
	r = admin("rearm", "policy", "web-nginx-down", "--comment", "test")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "policy/web-nginx-down re-armed: nothing was held (circuit breaker closed, no correlated-failure hold); its failure count starts from zero\n", r.stdout)

	// Key rotation with no agents: every step goes through.
	r = viewer("get", "keys", "-o", "json")
	require.Equal(t, 0, r.code, r.stderr)
	var ks []map[string]any
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &ks))
	require.Len(t, ks, 1)
	require.Equal(t, "active", ks[0]["state"])
	old := ks[0]["keyId"].(string)
	r = admin("keys", "rotate")
	require.Equal(t, 0, r.code, r.stderr)
	require.NoError(t, json.Unmarshal([]byte(admin("get", "keys", "-o", "json").stdout), &ks))
	require.Len(t, ks, 2)
	next := ks[1]["keyId"].(string)
	require.Equal(t, "signing key "+next+" created and published (held by 0/0 agents so far); the active key "+old+" keeps signing\n"+
		"next: no agent is enrolled, so nothing to wait for: tendctl keys activate "+next+"\n", r.stdout)
	r = admin("keys", "activate", next)
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "signing key "+next+" activated")
	r = admin("keys", "retire", old)
	require.Equal(t, 1, r.code, "too early: tasks the old key signed may still be in flight")
	require.Contains(t, r.stderr, "may still be in flight")
	r = admin("keys", "retire", old, "--force")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "rotation complete: "+next+" is the only key agents accept")

	// Revoked: refused from the next call on.
	r = admin("delete", "credential", "ci-bot")
	require.Equal(t, 0, r.code, r.stderr)
	r = viewer("get", "agents")
	require.Equal(t, 1, r.code)
	require.Contains(t, r.stderr, "error: permission denied: credential ci-bot (serial ")
	require.Contains(t, r.stderr, ") was revoked ("+viewerConf+" holds a revoked credential: ask an admin for a new one)\n")
}
