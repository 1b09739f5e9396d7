package main

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"sigs.k8s.io/yaml"

	adminv1 "tend.dev/tend/proto/tend/admin/v1"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

const goodPolicy = `apiVersion: tend.dev/v1
kind: Policy
metadata:
  name: tcp-db
spec:
  selector:
    matchLabels: {role: web}
  check:
    type: tcp
    interval: 5s
    tcp: {address: "127.0.0.1:5432"}
`

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	return p
}

func exampleFile(name string) string {
	return filepath.Join("..", "..", "deploy", "examples", name)
}

func TestTokenCreate(t *testing.T) {
	f, conf := startFake(t)
	r := runCLI(t, nil, "", "--config", conf, "token", "create", "--ttl", "2h", "--uses", "3", "--description", "rack 4")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "tok001.secret.pin\n", r.stdout, "the token alone on stdout")
	require.Contains(t, r.stderr, "token tok001: 3 use(s), expires ")
	require.Contains(t, r.stderr, "CA pin sha256:abcd")
	require.Len(t, f.tokenReqs, 1)
	require.Equal(t, 2*time.Hour, f.tokenReqs[0].GetTtl().AsDuration())
	require.EqualValues(t, 3, f.tokenReqs[0].GetUses())
	require.Equal(t, "rack 4", f.tokenReqs[0].GetDescription())

	r = runCLI(t, nil, "", "--config", conf, "token", "create")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, time.Hour, f.tokenReqs[1].GetTtl().AsDuration(), "default ttl")
	require.EqualValues(t, 1, f.tokenReqs[1].GetUses(), "default uses")

	r = runCLI(t, nil, "", "--config", conf, "token", "create", "--ttl", "0s")
	require.Equal(t, 1, r.code)
	require.Contains(t, r.stderr, "error: --ttl must be positive")
	require.Len(t, f.tokenReqs, 2, "nothing sent")
}

func TestConfigResolution(t *testing.T) {
	_, conf := startFake(t)
	// $TEND_CONFIG is used when --config is not given.
	r := runCLI(t, map[string]string{"TEND_CONFIG": conf}, "", "get", "agents", "-o", "json")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "[]\n", r.stdout)
	// --config wins over $TEND_CONFIG.
	r = runCLI(t, map[string]string{"TEND_CONFIG": "/nonexistent/admin.conf"}, "", "--config", conf, "get", "agents")
	require.Equal(t, 0, r.code, r.stderr)
	// Neither: the default path, relative to the working directory.
	r = runCLI(t, nil, "", "get", "agents")
	require.Equal(t, 1, r.code)
	require.Contains(t, r.stderr, "error: admin config ./tend-data/admin.conf does not exist")
}

func TestApply(t *testing.T) {
	f, conf := startFake(t)
	dir := t.TempDir()
	p := writeFile(t, dir, "db.yaml", goodPolicy)

	r := runCLI(t, nil, "", "--config", conf, "apply", "-f", p)
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "policy/tcp-db created\n", r.stdout)
	require.Len(t, f.applied, 1)
	require.Equal(t, p, f.applied[0].GetFilename())
	require.Equal(t, goodPolicy, string(f.applied[0].GetContent()), "the raw file is sent")

	r = runCLI(t, nil, "", "--config", conf, "apply", "-f", p)
	require.Equal(t, "policy/tcp-db unchanged\n", r.stdout)

	// stdin, and a changed spec.
	r = runCLI(t, nil, strings.Replace(goodPolicy, "interval: 5s", "interval: 6s", 1), "--config", conf, "apply", "-f", "-")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "policy/tcp-db configured\n", r.stdout)
	require.Equal(t, "<stdin>", f.applied[2].GetFilename())

	// A directory, and several -f.
	r = runCLI(t, nil, "", "--config", conf, "apply", "-f", exampleFile(""), "-f", p)
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "policy/demo-process created\npolicy/demo-http created\npolicy/demo-disk created\npolicy/disk-root-full created\npolicy/web-nginx-down created\npolicy/tcp-db configured\n", r.stdout)

	// --dry-run is passed on.
	r = runCLI(t, nil, "", "--config", conf, "apply", "--dry-run", "-f", p)
	require.Equal(t, 0, r.code, r.stderr)
	require.True(t, f.applied[len(f.applied)-1].GetDryRun())
}

func TestApplyValidatesLocallyFirst(t *testing.T) {
	f, conf := startFake(t)
	dir := t.TempDir()
	good := writeFile(t, dir, "good.yaml", goodPolicy)
	bad := writeFile(t, dir, "bad.yaml", strings.Replace(strings.Replace(goodPolicy, "type: tcp", "type: htp", 1), "{role: web}", "{}", 1))

	r := runCLI(t, nil, "", "--config", conf, "apply", "-f", good, "-f", bad)
	require.Equal(t, 1, r.code)
	require.Empty(t, r.stdout)
	require.Contains(t, r.stderr, bad+`:7: spec.selector.matchLabels: required: an empty selector is an error, not "all"`)
	require.Contains(t, r.stderr, bad+`:9: spec.check.type: unknown check type "htp" (want one of process, disk, tcp, http, command, service)`)
	require.Contains(t, r.stderr, "error: 2 problems in "+bad+": nothing was applied")
	require.Empty(t, f.applied, "nothing is sent when any file is invalid")

	// No control plane is needed to find the problems.
	r = runCLI(t, nil, "", "--config", "/nonexistent/admin.conf", "apply", "-f", bad)
	require.Equal(t, 1, r.code)
	require.Contains(t, r.stderr, bad+":9: spec.check.type")
	require.NotContains(t, r.stderr, "admin config")

	// stdin read once only; missing files; no -f.
	r = runCLI(t, nil, goodPolicy, "--config", conf, "apply", "-f", "-", "-f", "-")
	require.Contains(t, r.stderr, "error: -f - given twice")
	r = runCLI(t, nil, "", "--config", conf, "apply", "-f", filepath.Join(dir, "missing.yaml"))
	require.Contains(t, r.stderr, "error: read policy file: stat ")
	r = runCLI(t, nil, "", "--config", conf, "apply")
	require.Equal(t, 1, r.code)
	require.Contains(t, r.stderr, "error: no file given: use -f FILE")
	require.Empty(t, f.applied)
}

func TestApplyServerError(t *testing.T) {
	f, conf := startFake(t)
	dir := t.TempDir()
	p1 := writeFile(t, dir, "a.yaml", goodPolicy)
	p2 := writeFile(t, dir, "b.yaml", strings.Replace(goodPolicy, "tcp-db", "tcp-db-2", 1))
	f.mu.Lock()
	f.applyErr = map[string]error{p1: status.Error(codes.FailedPrecondition, p1+": store is read-only")}
	f.mu.Unlock()

	r := runCLI(t, nil, "", "--config", conf, "apply", "-f", p1)
	require.Equal(t, 1, r.code)
	require.Equal(t, "error: "+p1+": store is read-only\n", r.stderr, "the gRPC prefix is stripped")

	// With several files, the others are still applied (each file is all or
	// nothing on the server) and the exit code says something failed.
	r = runCLI(t, nil, "", "--config", conf, "apply", "-f", p1, "-f", p2)
	require.Equal(t, 1, r.code)
	require.Equal(t, "policy/tcp-db-2 created\n", r.stdout)
	require.Contains(t, r.stderr, "error: "+p1+": nothing applied from this file: "+p1+": store is read-only\n")
	require.Contains(t, r.stderr, "error: 1 of 2 files not applied\n")
}

func seed(f *fakeAdmin) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	f.agents = []*adminv1.Agent{
		{Name: "demo-2", Id: "agt-2", Labels: map[string]string{"role": "web", "zone": "b"}, Status: adminv1.AgentStatus_AGENT_STATUS_CONNECTED, LastSeen: timestamppb.New(now), Version: "0.1.0"},
		{Name: "demo-1", Id: "agt-1", Labels: map[string]string{"role": "web", "zone": "a"}, Status: adminv1.AgentStatus_AGENT_STATUS_CONNECTED, LastSeen: timestamppb.New(now), Version: "0.1.0",
			Facts: map[string]string{"os": "linux"}, EnrolledAt: timestamppb.New(now.Add(-time.Hour))},
		{Name: "db-1", Id: "agt-3", Labels: map[string]string{"role": "db"}, Status: adminv1.AgentStatus_AGENT_STATUS_DOWN},
	}
	f.checks = []*adminv1.CheckState{
		{AgentId: "agt-1", AgentName: "demo-1", CheckId: "web-nginx-down", Since: timestamppb.New(now),
			Last: &agentv1.CheckResult{Status: agentv1.CheckStatus_CHECK_STATUS_CRITICAL, Output: "refused", StartedAt: timestamppb.New(now)}},
		{AgentId: "agt-2", AgentName: "demo-2", CheckId: "web-nginx-down", Since: timestamppb.New(now),
			Last: &agentv1.CheckResult{Status: agentv1.CheckStatus_CHECK_STATUS_OK, Output: "200 OK", StartedAt: timestamppb.New(now), Metrics: map[string]float64{"latency_ms": 3}}},
	}
	f.results["demo-1/web-nginx-down"] = []*agentv1.CheckResult{
		{Seq: 1, CheckId: "web-nginx-down", Status: agentv1.CheckStatus_CHECK_STATUS_OK},
		{Seq: 2, CheckId: "web-nginx-down", Status: agentv1.CheckStatus_CHECK_STATUS_CRITICAL, Output: "refused"},
	}
}

func TestGet(t *testing.T) {
	f, conf := startFake(t)
	seed(f)
	require.Equal(t, 0, runCLI(t, nil, "", "--config", conf, "apply", "-f", exampleFile("web-nginx-down.yaml")).code)
	cli := func(args ...string) cliResult {
		t.Helper()
		return runCLI(t, nil, "", append([]string{"--config", conf}, args...)...)
	}

	t.Run("agents json", func(t *testing.T) {
		for _, typ := range []string{"agents", "agent", "ag"} {
			r := cli("get", typ, "-o", "json")
			require.Equal(t, 0, r.code, r.stderr)
			var list []map[string]any
			require.NoError(t, json.Unmarshal([]byte(r.stdout), &list))
			require.Len(t, list, 3)
			require.Equal(t, "db-1", list[0]["name"], "sorted by name")
			require.Equal(t, "down", list[0]["status"])
			require.Equal(t, []string{"id", "labels", "lastSeen", "name", "status", "version"}, keys(list[1]))
		}
	})
	t.Run("one agent by name, id or TYPE/NAME", func(t *testing.T) {
		for _, args := range [][]string{{"agent", "demo-1"}, {"agent/demo-1"}, {"agents", "agt-1"}} {
			r := cli(append([]string{"get"}, append(args, "-o", "yaml")...)...)
			require.Equal(t, 0, r.code, r.stderr)
			var list []map[string]any
			require.NoError(t, yaml.Unmarshal([]byte(r.stdout), &list))
			require.Len(t, list, 1)
			require.Equal(t, "demo-1", list[0]["name"])
		}
		r := cli("get", "agent", "ghost")
		require.Equal(t, 1, r.code)
		require.Contains(t, r.stderr, `error: agent "ghost" not found`)
	})
	t.Run("agents table", func(t *testing.T) {
		r := cli("get", "agents")
		require.Equal(t, 0, r.code, r.stderr)
		lines := splitLines(r.stdout)
		require.Len(t, lines, 4)
		require.Regexp(t, `^NAME\s+STATUS\s+LAST SEEN\s+LABELS\s+VERSION\s+ID$`, lines[0])
		require.Regexp(t, `^demo-1\s+connected\s+\d+s ago\s+role=web,zone=a\s+0\.1\.0\s+agt-1$`, lines[2])
	})
	t.Run("policies", func(t *testing.T) {
		r := cli("get", "policies", "-o", "json")
		require.Equal(t, 0, r.code, r.stderr)
		var list []map[string]any
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &list))
		require.Len(t, list, 1)
		require.Equal(t, []string{"name", "spec", "version"}, keys(list[0]))
		spec := list[0]["spec"].(map[string]any)
		require.Equal(t, "http", spec["check"].(map[string]any)["type"])

		r = cli("get", "policy/web-nginx-down")
		require.Equal(t, 0, r.code, r.stderr)
		require.Regexp(t, `web-nginx-down\s+1\s+enforce\s+http every 5s\s+role=web\s+process.restart\s+\d+s ago`, r.stdout)

		r = cli("get", "po", "nope")
		require.Equal(t, 1, r.code)
		require.Equal(t, "error: policy \"nope\" not found\n", r.stderr)
	})
	t.Run("checks", func(t *testing.T) {
		r := cli("get", "checks", "-o", "json")
		require.Equal(t, 0, r.code, r.stderr)
		var list []map[string]any
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &list))
		require.Len(t, list, 2)
		require.Equal(t, []string{"agent", "check", "lastRun", "metrics", "output", "since", "status"}, keys(list[0]))
		require.Equal(t, "demo-1", list[0]["agent"])
		require.Equal(t, "critical", list[0]["status"])
		require.Equal(t, map[string]any{"latency_ms": 3.0}, list[1]["metrics"])

		r = cli("get", "checks", "--agent", "demo-2", "-o", "json")
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &list))
		require.Len(t, list, 1)
		require.Equal(t, "ok", list[0]["status"])

		r = cli("get", "check/other", "-o", "json")
		require.Equal(t, "[]\n", r.stdout)
	})
	t.Run("results", func(t *testing.T) {
		r := cli("get", "results", "demo-1", "web-nginx-down", "-o", "json", "--limit", "1")
		require.Equal(t, 0, r.code, r.stderr)
		var list []map[string]any
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &list))
		require.Len(t, list, 1)
		require.EqualValues(t, 2, list[0]["seq"])
		require.Equal(t, "critical", list[0]["status"])

		r = cli("get", "results", "demo-1")
		require.Equal(t, 1, r.code)
		require.Contains(t, r.stderr, "error: get results needs AGENT and CHECK")
	})
}

func TestDescribeAndDelete(t *testing.T) {
	f, conf := startFake(t)
	seed(f)
	cli := func(args ...string) cliResult {
		t.Helper()
		return runCLI(t, nil, "", append([]string{"--config", conf}, args...)...)
	}
	require.Equal(t, 0, cli("apply", "-f", exampleFile("web-nginx-down.yaml")).code)

	r := cli("describe", "policy", "web-nginx-down")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "Name:            web-nginx-down\n")
	require.Contains(t, r.stdout, "Version:         1\n")
	require.Contains(t, r.stdout, "Matched agents:  2: demo-1, demo-2\n")
	require.Contains(t, r.stdout, "Spec:\n  selector:\n    matchLabels:\n      role: web\n  mode: enforce\n")
	require.Contains(t, r.stdout, "\n    interval: 5s\n")
	require.Contains(t, r.stdout, "\n    cooldown: 10m\n")

	r = cli("describe", "agent", "demo-1")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "ID:              agt-1\n")
	require.Contains(t, r.stdout, "Labels:          role=web,zone=a\n")
	require.Regexp(t, `web-nginx-down\s+critical\s+\d+s ago\s+\d+s ago\s+refused`, r.stdout)

	r = cli("delete", "policy", "web-nginx-down")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "policy/web-nginx-down deleted\n", r.stdout)
	r = cli("delete", "policy/web-nginx-down")
	require.Equal(t, 1, r.code)
	require.Equal(t, "error: policy \"web-nginx-down\" not found\n", r.stderr)

	r = cli("delete", "agent", "agt-2")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "agent/demo-2 deleted (revoked: its certificate is refused from now on)\n", r.stdout)
	require.Equal(t, []string{"policy/web-nginx-down", "agent/demo-2"}, f.deleted)
}

func TestUsageErrors(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"get"}, "error: missing resource type (want one of agents, policies, checks, results, incidents, tasks, credentials, keys)\nSee 'tendctl get --help'.\n"},
		{[]string{"get", "foo"}, "error: unknown resource type \"foo\" (want one of agents, policies, checks, results, incidents, tasks, credentials, keys)\nSee 'tendctl get --help'.\n"},
		{[]string{"get", "agents", "-o", "xml"}, "error: -o: unknown output format \"xml\" (want table, json or yaml)\nSee 'tendctl get --help'.\n"},
		{[]string{"get", "agent/x", "y"}, "error: use either TYPE/NAME or TYPE NAME..., not both\nSee 'tendctl get --help'.\n"},
		{[]string{"delete", "policy"}, "error: delete takes exactly one NAME, got 0\nSee 'tendctl delete --help'.\n"},
		{[]string{"delete", "checks", "x"}, "error: unknown resource type \"checks\" (want one of policies, agents, credentials)\nSee 'tendctl delete --help'.\n"},
		{[]string{"delete", "credential"}, "error: delete takes exactly one NAME, got 0\nSee 'tendctl delete --help'.\n"},
		{[]string{"approve"}, "error: missing resource type (want one of tasks)\nSee 'tendctl approve --help'.\n"},
		{[]string{"approve", "task"}, "error: approve takes exactly one task ID, got 0\nSee 'tendctl approve --help'.\n"},
		{[]string{"approve", "task", "a", "b"}, "error: approve takes exactly one task ID, got 2\nSee 'tendctl approve --help'.\n"},
		{[]string{"approve", "policy", "a"}, "error: unknown resource type \"policy\" (want one of tasks)\nSee 'tendctl approve --help'.\n"},
		{[]string{"approve", "task", "a", "-o", "xml"}, "error: -o: unknown output format \"xml\" (want table, json or yaml)\nSee 'tendctl approve --help'.\n"},
		{[]string{"rearm", "policy"}, "error: rearm takes exactly one policy NAME, got 0\nSee 'tendctl rearm --help'.\n"},
		{[]string{"rearm", "task", "x"}, "error: unknown resource type \"task\" (want one of policies)\nSee 'tendctl rearm --help'.\n"},
		{[]string{"credential"}, "error: missing subcommand (want: credential create NAME --role ROLE --out FILE)\nSee 'tendctl credential --help'.\n"},
		{[]string{"credential", "create", "--role", "viewer", "--out", "x.conf"}, "error: credential create takes exactly one NAME, got 0\nSee 'tendctl credential create --help'.\n"},
		{[]string{"credential", "create", "bob", "--out", "x.conf"}, "error: --role is required (want one of viewer, operator, admin)\nSee 'tendctl credential create --help'.\n"},
		{[]string{"credential", "create", "bob", "--role", "root", "--out", "x.conf"}, "error: --role: unknown role \"root\" (want one of viewer, operator, admin)\nSee 'tendctl credential create --help'.\n"},
		{[]string{"credential", "create", "bob", "--role", "viewer"}, "error: --out FILE is required: where to write the new admin config\nSee 'tendctl credential create --help'.\n"},
		{[]string{"credential", "create", "bob", "--role", "viewer", "--ttl", "-1h", "--out", "x.conf"}, "error: --ttl must be positive, got -1h0m0s\nSee 'tendctl credential create --help'.\n"},
		{[]string{"keys"}, "error: missing subcommand (want: keys rotate, keys activate KEY-ID, keys retire KEY-ID)\nSee 'tendctl keys --help'.\n"},
		{[]string{"keys", "rotate", "x"}, "error: unexpected argument \"x\"\nSee 'tendctl keys rotate --help'.\n"},
		{[]string{"keys", "activate"}, "error: keys activate takes exactly one KEY-ID, got 0 (tendctl get keys lists them)\nSee 'tendctl keys activate --help'.\n"},
		{[]string{"keys", "retire", "a", "b"}, "error: keys retire takes exactly one KEY-ID, got 2 (tendctl get keys lists them)\nSee 'tendctl keys retire --help'.\n"},
		{[]string{"describe", "policy", "a", "b"}, "error: describe takes exactly one NAME, got 2\nSee 'tendctl describe --help'.\n"},
		{[]string{"token"}, "error: missing subcommand (want: token create)\nSee 'tendctl token --help'.\n"},
		{[]string{"token", "create", "extra"}, "error: unexpected argument \"extra\"\nSee 'tendctl token create --help'.\n"},
		{[]string{"get", "agents", "--bogus"}, "error: unknown flag: --bogus\nSee 'tendctl get --help'.\n"},
		{[]string{"frobnicate"}, "error: unknown command \"frobnicate\" for \"tendctl\""},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			r := runCLI(t, nil, "", append([]string{"--config", "/nonexistent/admin.conf"}, tc.args...)...)
			require.Equal(t, 1, r.code)
			require.Empty(t, r.stdout)
			require.True(t, strings.HasPrefix(r.stderr, tc.want), "stderr:\n%s", r.stderr)
		})
	}
	r := runCLI(t, nil, "", "--help")
	require.Equal(t, 0, r.code)
	require.Contains(t, r.stdout, "tendctl administers a Tend control plane")
}

func TestConnectionErrors(t *testing.T) {
	pki := newTestPKI(t)
	// A port nobody listens on.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := lis.Addr().String()
	require.NoError(t, lis.Close())
	r := runCLI(t, nil, "", "--config", pki.writeConf(t, addr), "get", "agents")
	require.Equal(t, 1, r.code)
	require.True(t, strings.HasPrefix(r.stderr, "error: cannot reach control plane at "+addr+": "), r.stderr)
	require.Contains(t, r.stderr, "connection refused (is tend-controlplane running?)")
	require.NotContains(t, r.stderr, "rpc error")

	// A control plane with another CA.
	_, conf := startFake(t)
	other := newTestPKI(t)
	b, err := os.ReadFile(conf)
	require.NoError(t, err)
	var c struct {
		Server string `json:"server"`
	}
	require.NoError(t, yaml.Unmarshal(b, &c))
	r = runCLI(t, nil, "", "--config", other.writeConf(t, c.Server), "get", "agents")
	require.Equal(t, 1, r.code)
	require.Contains(t, r.stderr, "error: cannot reach control plane at "+c.Server+": TLS handshake failed: ")
	require.Contains(t, r.stderr, "admin.conf of this control plane?")

	// A server that does not answer in time.
	slow, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { slow.Close() })
	r = runCLI(t, nil, "", "--config", pki.writeConf(t, slow.Addr().String()), "--timeout", "300ms", "get", "agents")
	require.Equal(t, 1, r.code)
	require.Contains(t, r.stderr, "did not answer within 300ms")
}
