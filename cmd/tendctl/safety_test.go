package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/timestamppb"
	"sigs.k8s.io/yaml"

	adminv1 "tend.dev/tend/proto/tend/admin/v1"
)

// Tests of the commands for the safety rails: approve, rearm, describe
// policy's Safety section, get tasks' approval columns.

func seedTasks(f *fakeAdmin) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	f.tasks = []*adminv1.Task{
		{Id: "task-wait", Incident: "inc-1", Agent: "demo-1", AgentId: "agt-1", Action: "process.restart", ParamsJson: []byte(`{"pidfile":"/run/a.pid"}`),
			State: "awaiting_approval", CreatedAt: timestamppb.New(now.Add(-time.Minute)), ApprovalDeadline: timestamppb.New(now.Add(30 * time.Minute)), Policy: "web-nginx-down"},
		{Id: "task-done", Incident: "inc-0", Agent: "demo-2", AgentId: "agt-2", Action: "process.restart", State: "succeeded", Seq: 3,
			CreatedAt: timestamppb.New(now.Add(-2 * time.Hour)), FinishedAt: timestamppb.New(now.Add(-2 * time.Hour)),
			ApprovedBy: "alice (operator)", ApprovedAt: timestamppb.New(now.Add(-2 * time.Hour)), Policy: "web-nginx-down"},
	}
}

func TestGetTasksApproval(t *testing.T) {
	f, conf := startFake(t)
	seedTasks(f)
	cli := func(args ...string) cliResult {
		t.Helper()
		return runCLI(t, nil, "", append([]string{"--config", conf}, args...)...)
	}
	r := cli("get", "tasks")
	require.Equal(t, 0, r.code, r.stderr)
	lines := splitLines(r.stdout)
	require.Len(t, lines, 3)
	require.Regexp(t, `^ID\s+AGENT\s+ACTION\s+STATE\s+SEQ\s+CREATED\s+APPROVAL\s+INCIDENT\s+OUTPUT$`, lines[0])
	require.Regexp(t, `^task-wait\s+demo-1\s+process\.restart\s+awaiting_approval\s+-\s+1m(\d+s)? ago\s+waiting, (29m|30m) left\s+inc-1\s+-$`, lines[1])
	require.Regexp(t, `^task-done\s+demo-2\s+process\.restart\s+succeeded\s+3\s+2h ago\s+by alice \(operator\) 2h ago\s+inc-0\s+-$`, lines[2])
	require.Equal(t, "1 task awaiting approval: tendctl approve task task-wait\n", r.stderr, "the hint goes to stderr")

	r = cli("get", "tasks", "-o", "json")
	require.Equal(t, 0, r.code, r.stderr)
	require.Empty(t, r.stderr, "no hint with -o json")
	var list []map[string]any
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &list))
	require.Len(t, list, 2)
	require.Equal(t, "awaiting_approval", list[0]["state"])
	require.NotNil(t, list[0]["approvalDeadline"])
	require.Equal(t, "", list[0]["approvedBy"])
	require.Nil(t, list[0]["approvedAt"])
	require.Equal(t, "alice (operator)", list[1]["approvedBy"])
	require.NotNil(t, list[1]["approvedAt"])

	// One task by id.
	r = cli("get", "task/task-done", "-o", "yaml")
	require.Equal(t, 0, r.code, r.stderr)
	require.NoError(t, yaml.Unmarshal([]byte(r.stdout), &list))
	require.Len(t, list, 1)
	require.Equal(t, "task-done", list[0]["id"])
	r = cli("get", "task", "task-nope")
	require.Equal(t, 1, r.code)
	require.Equal(t, "error: task \"task-nope\" not found (tendctl get tasks lists them)\n", r.stderr)
}

func TestApprove(t *testing.T) {
	f, conf := startFake(t)
	seedTasks(f)
	cli := func(args ...string) cliResult {
		t.Helper()
		return runCLI(t, nil, "", append([]string{"--config", conf}, args...)...)
	}

	r := cli("approve", "task", "task-wait", "--comment", "checked with the DBA")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "task task-wait approved by admin (admin); state pending (signed, seq 7; sent when agent demo-1 connects)\n", r.stdout)
	require.Len(t, f.approved, 1)
	require.Equal(t, "task-wait", f.approved[0].GetId())
	require.Equal(t, "checked with the DBA", f.approved[0].GetComment())

	// Only a task awaiting approval can be approved: the server says why.
	r = cli("approve", "task/task-wait")
	require.Equal(t, 1, r.code)
	require.Equal(t, "error: task task-wait is pending: only a task awaiting approval can be approved: not in the state the operation needs\n", r.stderr)
	r = cli("approve", "task", "task-nope")
	require.Equal(t, 1, r.code)
	require.Equal(t, "error: task \"task-nope\": not found\n", r.stderr)

	// -o json / yaml: the task as get tasks shows it.
	f.mu.Lock()
	f.tasks[1].State = "awaiting_approval"
	f.mu.Unlock()
	r = cli("approve", "task", "task-done", "-o", "json")
	require.Equal(t, 0, r.code, r.stderr)
	var obj map[string]any
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &obj))
	require.Equal(t, []string{"action", "agent", "approvalDeadline", "approvedAt", "approvedBy", "createdAt", "finishedAt", "id", "incident", "output", "params", "seq", "state"}, keys(obj))
	require.Equal(t, "admin (admin)", obj["approvedBy"])
	require.Equal(t, "pending", obj["state"])
	require.NotNil(t, obj["approvedAt"])

	f.mu.Lock()
	f.tasks[1].State = "awaiting_approval"
	f.mu.Unlock()
	r = cli("approve", "task", "task-done", "-o", "yaml")
	require.Equal(t, 0, r.code, r.stderr)
	require.NoError(t, yaml.Unmarshal([]byte(r.stdout), &obj))
	require.Equal(t, "task-done", obj["id"])
}

func TestRearm(t *testing.T) {
	f, conf := startFake(t)
	seed(f)
	cli := func(args ...string) cliResult {
		t.Helper()
		return runCLI(t, nil, "", append([]string{"--config", conf}, args...)...)
	}
	require.Equal(t, 0, cli("apply", "-f", exampleFile("web-nginx-down.yaml")).code)
	f.mu.Lock()
	f.status["web-nginx-down"] = &adminv1.PolicyStatus{
		BreakerOpen: true, BreakerReason: "5 failed attempts within 1h", BreakerOpenedAt: timestamppb.New(time.Now().Add(-5 * time.Minute)), BreakerFailures: 5,
		Correlated: true, CorrelatedReason: "3 of 3 agents failing within 5m", FleetIncident: "inc-fleet", StartedLastHour: 6,
	}
	f.mu.Unlock()

	// describe shows why it stopped, and how to re-arm.
	r := cli("describe", "policy", "web-nginx-down")
	require.Equal(t, 0, r.code, r.stderr)
	require.Regexp(t, `\nSafety:\n  Circuit breaker:  OPEN since \S+ \(5m(\d+s)? ago\): 5 failed attempts within 1h\n\s+5 failed attempts counted in the last 1h; the policy escalates instead of acting until: tendctl rearm policy web-nginx-down\n`, r.stdout)
	require.Contains(t, r.stdout, "  Correlated hold:  HELD: 3 of 3 agents failing within 5m; fleet incident inc-fleet\n")
	require.Contains(t, r.stdout, "  Tasks:            0 running (max 10%), 6 started in the last hour (max 20)\n")
	require.NotContains(t, r.stdout, "Would have acted", "an enforce policy with no shadow history")

	r = cli("rearm", "policy", "web-nginx-down", "--comment", "bad deploy rolled back")
	require.Equal(t, 0, r.code, r.stderr)
	require.Regexp(t, `^policy/web-nginx-down re-armed: circuit breaker closed \(it was open since 5m(\d+s)? ago: 5 failed attempts within 1h\); correlated-failure hold ended \(fleet incident inc-fleet\)\n$`, r.stdout)
	require.Len(t, f.rearmed, 1)
	require.Equal(t, "bad deploy rolled back", f.rearmed[0].GetComment())

	r = cli("rearm", "policy/web-nginx-down")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "policy/web-nginx-down re-armed: nothing was held (circuit breaker closed, no correlated-failure hold); its failure count starts from zero\n", r.stdout)

	r = cli("rearm", "policy", "web-nginx-down", "-o", "json")
	require.Equal(t, 0, r.code, r.stderr)
	var obj map[string]any
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &obj))
	require.Equal(t, []string{"breakerFailures", "breakerOpen", "breakerOpenedAt", "breakerReason", "correlated", "correlatedReason",
		"fleetIncident", "running", "startedLastHour", "wouldHaveActed"}, keys(obj))
	require.Equal(t, false, obj["breakerOpen"])
	require.EqualValues(t, 6, obj["startedLastHour"])
	require.Equal(t, []any{}, obj["wouldHaveActed"])

	r = cli("rearm", "policy", "nope")
	require.Equal(t, 1, r.code)
	require.Equal(t, "error: policy \"nope\" not found\n", r.stderr)
}

func TestDescribeShadowPolicy(t *testing.T) {
	f, conf := startFake(t)
	seed(f)
	cli := func(args ...string) cliResult {
		t.Helper()
		return runCLI(t, nil, "", append([]string{"--config", conf}, args...)...)
	}
	shadow := strings.Replace(goodPolicy, "spec:\n", "spec:\n  mode: shadow\n", 1) +
		"  remediation:\n    action: process.restart\n    params: {match: {pidfile: /run/db.pid}, command: [/usr/bin/db]}\n"
	p := writeFile(t, t.TempDir(), "shadow.yaml", shadow)
	r := cli("apply", "-f", p)
	require.Equal(t, 0, r.code, r.stderr)

	r = cli("describe", "policy", "tcp-db")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "Safety:\n  <not reported")
	require.True(t, strings.HasSuffix(r.stdout, "\nWould have acted (shadow):\n  none\n"), r.stdout)

	now := time.Now()
	f.mu.Lock()
	f.status["tcp-db"] = &adminv1.PolicyStatus{WouldHaveActed: []*adminv1.ShadowDecision{
		{At: timestamppb.New(now.Add(-2 * time.Minute)), Incident: "inc-2", Agent: "demo-2", Action: "process.restart", ParamsJson: []byte(`{"match":{"pidfile":"/run/db.pid"}}`)},
		{At: timestamppb.New(now.Add(-10 * time.Minute)), Incident: "inc-1", Agent: "demo-1", Action: "process.restart", ParamsJson: []byte(`{"match":{"pidfile":"/run/db.pid"}}`)},
	}}
	f.mu.Unlock()
	r = cli("describe", "policy", "tcp-db")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "  Circuit breaker:  closed: 0 failed attempts counted in the last 1h (opens at 5)\n")
	i := strings.Index(r.stdout, "Would have acted (shadow):\n")
	require.Positive(t, i)
	lines := splitLines(r.stdout[i:])
	require.Len(t, lines, 4)
	require.Regexp(t, `^  WHEN\s+AGENT\s+ACTION\s+PARAMS\s+INCIDENT$`, lines[1])
	require.Regexp(t, `^  2m(\d+s)? ago\s+demo-2\s+process\.restart\s+\{"match":\{"pidfile":"/run/db\.pid"\}\}\s+inc-2$`, lines[2])
	require.Regexp(t, `^  10m ago\s+demo-1\s+process\.restart\s+.*inc-1$`, lines[3])
}
