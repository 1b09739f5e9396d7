package main

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"sigs.k8s.io/yaml"

	adminv1 "tend.dev/tend/proto/tend/admin/v1"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

var fixedNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func fixtureAgents() []*adminv1.Agent {
	return []*adminv1.Agent{
		{Name: "demo-1", Id: "agt-1", Labels: map[string]string{"role": "web", "zone": "a"}, Status: adminv1.AgentStatus_AGENT_STATUS_CONNECTED,
			LastSeen: timestamppb.New(fixedNow.Add(-12 * time.Second)), Version: "0.1.0"},
		{Name: "demo-2", Id: "agt-2", Labels: map[string]string{"role": "web", "zone": "b"}, Status: adminv1.AgentStatus_AGENT_STATUS_DISCONNECTED,
			LastSeen: timestamppb.New(fixedNow.Add(-3*time.Minute - 5*time.Second)), Version: "0.1.0"},
		{Name: "db-1", Id: "agt-3", Status: adminv1.AgentStatus_AGENT_STATUS_DOWN},
	}
}

func fixtureChecks() []*adminv1.CheckState {
	return []*adminv1.CheckState{
		{AgentId: "agt-1", AgentName: "demo-1", CheckId: "disk-root-full", Since: timestamppb.New(fixedNow.Add(-2 * time.Hour)),
			Last: &agentv1.CheckResult{Seq: 9, CheckId: "disk-root-full", Status: agentv1.CheckStatus_CHECK_STATUS_OK, Output: "/ is 15% full",
				Metrics: map[string]float64{"used_percent": 15, "free_bytes": 1e9}, StartedAt: timestamppb.New(fixedNow.Add(-20 * time.Second))}},
		{AgentId: "agt-1", AgentName: "demo-1", CheckId: "web-nginx-down", Since: timestamppb.New(fixedNow.Add(-40 * time.Second)),
			Last: &agentv1.CheckResult{Seq: 10, CheckId: "web-nginx-down", Status: agentv1.CheckStatus_CHECK_STATUS_CRITICAL, Output: "GET http://127.0.0.1:8080/healthz: connection refused\nsecond line",
				Metrics: map[string]float64{"bad": math.NaN()}, StartedAt: timestamppb.New(fixedNow.Add(-4 * time.Second))}},
		{AgentId: "agt-3", CheckId: "never-ran"},
	}
}

func objects[S, T any](in []S, f func(S) T) []T {
	out := make([]T, 0, len(in))
	for _, x := range in {
		out = append(out, f(x))
	}
	return out
}

func render[T any](t *testing.T, format string, objs []T, table func(w io.Writer, now time.Time, objs []T)) (string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	require.NoError(t, printList(printer{out: &out, errOut: &errb, format: format, now: fixedNow}, objs, table))
	return out.String(), errb.String()
}

func TestAgentOutput(t *testing.T) {
	objs := objects(fixtureAgents(), toAgentObject)
	out, _ := render(t, formatTable, objs, agentTable)
	require.Equal(t, ""+
		"NAME     STATUS         LAST SEEN   LABELS            VERSION   ID\n"+
		"demo-1   connected      12s ago     role=web,zone=a   0.1.0     agt-1\n"+
		"demo-2   disconnected   3m5s ago    role=web,zone=b   0.1.0     agt-2\n"+
		"db-1     down           never       <none>            -         agt-3\n", out)

	out, _ = render(t, formatJSON, objs, agentTable)
	var list []map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &list))
	require.Len(t, list, 3)
	for _, o := range list {
		require.Equal(t, []string{"id", "labels", "lastSeen", "name", "status", "version"}, keys(o))
	}
	require.Equal(t, map[string]any{
		"name": "demo-1", "id": "agt-1", "labels": map[string]any{"role": "web", "zone": "a"},
		"status": "connected", "lastSeen": "2026-03-01T11:59:48Z", "version": "0.1.0",
	}, list[0])
	require.Equal(t, "down", list[2]["status"])
	require.Nil(t, list[2]["lastSeen"])
	require.Equal(t, map[string]any{}, list[2]["labels"], "labels is {} rather than null")

	y, _ := render(t, formatYAML, objs, agentTable)
	var fromYAML []map[string]any
	require.NoError(t, yaml.Unmarshal([]byte(y), &fromYAML))
	require.Equal(t, list, fromYAML, "yaml shows the same objects as json")
}

func TestPolicyOutput(t *testing.T) {
	spec := []byte(`{"selector":{"matchLabels":{"role":"web"}},"mode":"shadow","autonomous":false,"check":{"type":"tcp","interval":"5s","timeout":"2s","tcp":{"address":"127.0.0.1:5432"}},"trigger":{"failures":3,"window":5}}`)
	ps := []*adminv1.Policy{
		{Name: "db-down", Version: 3, SpecJson: spec, UpdatedAt: timestamppb.New(fixedNow.Add(-90 * time.Minute))},
		{Name: "from-the-future", Version: 1, SpecJson: []byte(`{"newField":1}`)},
	}
	objs := make([]policyObject, 0, len(ps))
	for _, p := range ps {
		o, err := toPolicyObject(p)
		require.NoError(t, err)
		objs = append(objs, o)
	}
	out, _ := render(t, formatTable, objs, policyTable)
	require.Equal(t, ""+
		"NAME              VERSION   MODE     CHECK          SELECTOR   ACTION   UPDATED\n"+
		"db-down           3         shadow   tcp every 5s   role=web   <none>   1h30m ago\n"+
		"from-the-future   1         ?        ?              ?          ?        -\n", out)

	out, _ = render(t, formatJSON, objs, policyTable)
	var list []map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &list))
	require.Equal(t, []string{"name", "spec", "version"}, keys(list[0]))
	require.Equal(t, "db-down", list[0]["name"])
	require.EqualValues(t, 3, list[0]["version"])
	require.IsType(t, map[string]any{}, list[0]["spec"], "spec is a JSON object, not a string")
	require.Equal(t, "shadow", list[0]["spec"].(map[string]any)["mode"])

	_, err := toPolicyObject(&adminv1.Policy{Name: "x", SpecJson: []byte("{")})
	require.ErrorContains(t, err, "not JSON")
}

func TestCheckOutput(t *testing.T) {
	objs := objects(fixtureChecks(), toCheckObject)
	out, _ := render(t, formatTable, objs, checkTable)
	lines := splitLines(out)
	require.Equal(t, []string{
		"AGENT    CHECK            STATUS     SINCE     LAST RUN   OUTPUT",
		"demo-1   disk-root-full   ok         2h ago    20s ago    / is 15% full",
		"demo-1   web-nginx-down   critical   40s ago   4s ago     GET http://127.0.0.1:8080/healthz: connection refused …",
		"agt-3    never-ran        unknown    never     never      -",
	}, lines)

	out, _ = render(t, formatJSON, objs, checkTable)
	var list []map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &list))
	for _, o := range list {
		require.Equal(t, []string{"agent", "check", "lastRun", "metrics", "output", "since", "status"}, keys(o))
	}
	require.Equal(t, map[string]any{
		"agent": "demo-1", "check": "disk-root-full", "status": "ok", "output": "/ is 15% full",
		"lastRun": "2026-03-01T11:59:40Z", "since": "2026-03-01T10:00:00Z",
		"metrics": map[string]any{"used_percent": 15.0, "free_bytes": 1e9},
	}, list[0])
	require.Equal(t, map[string]any{"bad": nil}, list[1]["metrics"], "NaN is shown as null")
	require.Equal(t, "unknown", list[2]["status"])
	require.Nil(t, list[2]["lastRun"])
}

func TestResultOutput(t *testing.T) {
	rs := []*agentv1.CheckResult{
		{Seq: 1, CheckId: "c", PolicyVersion: 2, Status: agentv1.CheckStatus_CHECK_STATUS_WARNING, Output: "load 5",
			StartedAt: timestamppb.New(fixedNow.Add(-time.Minute)), Duration: durationpb.New(1500 * time.Microsecond)},
	}
	objs := make([]resultObject, 0, len(rs))
	for _, r := range rs {
		objs = append(objs, toResultObject("web-1", r))
	}
	out, _ := render(t, formatTable, objs, resultTable)
	require.Equal(t, []string{
		"SEQ   STATUS    STARTED   DURATION   OUTPUT",
		"1     warning   1m ago    1.5ms      load 5",
	}, splitLines(out))
	out, _ = render(t, formatJSON, objs, resultTable)
	var list []map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &list))
	require.Equal(t, "web-1", list[0]["agent"])
	require.Equal(t, "1.5ms", list[0]["duration"])
}

func TestEmptyLists(t *testing.T) {
	out, errOut := render(t, formatJSON, []agentObject(nil), agentTable)
	require.Equal(t, "[]\n", out)
	require.Empty(t, errOut)
	out, _ = render(t, formatYAML, []checkObject{}, checkTable)
	require.Equal(t, "[]\n", out)
	out, errOut = render(t, formatTable, []policyObject{}, policyTable)
	require.Empty(t, out)
	require.Equal(t, "No resources found.\n", errOut)
}

func TestAgo(t *testing.T) {
	cases := []struct {
		d    time.Duration
		want string
	}{
		{0, "0s ago"},
		{-5 * time.Second, "0s ago"}, // clock skew
		{12 * time.Second, "12s ago"},
		{59 * time.Second, "59s ago"},
		{60 * time.Second, "1m ago"},
		{3*time.Minute + 12*time.Second, "3m12s ago"},
		{34 * time.Minute, "34m ago"},
		{5*time.Hour + 3*time.Minute, "5h3m ago"},
		{14 * time.Hour, "14h ago"},
		{72 * time.Hour, "3d ago"},
	}
	for _, tc := range cases {
		ts := fixedNow.Add(-tc.d)
		require.Equal(t, tc.want, ago(fixedNow, &ts), "%s", tc.d)
	}
	require.Equal(t, "never", ago(fixedNow, nil))
	require.Equal(t, "never", ago(fixedNow, &time.Time{}))
}

func keys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func splitLines(s string) []string {
	var out []string
	for _, l := range bytes.Split(bytes.TrimRight([]byte(s), "\n"), []byte("\n")) {
		out = append(out, string(l))
	}
	return out
}

func fixtureTasks() []*adminv1.Task {
	ts := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(fixedNow.Add(d)) }
	return []*adminv1.Task{
		{Id: "task-wait", Incident: "inc-1", Agent: "demo-1", Action: "process.restart", ParamsJson: []byte(`{"pidfile":"/run/a.pid"}`),
			State: "awaiting_approval", CreatedAt: ts(-time.Minute), ApprovalDeadline: ts(59 * time.Minute)},
		{Id: "task-held", Incident: "inc-2", Agent: "demo-2", Action: "process.restart", State: "awaiting_approval",
			CreatedAt: ts(-3 * time.Minute), ApprovedBy: "alice (operator)", ApprovedAt: ts(-30 * time.Second), ApprovalDeadline: ts(57 * time.Minute)},
		{Id: "task-late", Incident: "inc-3", Agent: "demo-3", Action: "process.restart", State: "awaiting_approval",
			CreatedAt: ts(-2 * time.Hour), ApprovalDeadline: ts(-time.Hour)},
		{Id: "task-done", Incident: "inc-4", Agent: "demo-1", Action: "process.restart", State: "succeeded", Seq: 12,
			CreatedAt: ts(-5 * time.Hour), FinishedAt: ts(-5 * time.Hour), Output: "restarted pid 42",
			ApprovedBy: "bob (admin)", ApprovedAt: ts(-5 * time.Hour)},
		{Id: "task-auto", Incident: "inc-5", Agent: "demo-2", Action: "disk.cleanup", State: "running", Seq: 3, CreatedAt: ts(-10 * time.Second)},
	}
}

func TestTaskOutput(t *testing.T) {
	objs := objects(fixtureTasks(), toTaskObject)
	out, _ := render(t, formatTable, objs, taskTable)
	require.Equal(t, []string{
		"ID         AGENT   ACTION           STATE              SEQ  CREATED  APPROVAL                                         INCIDENT  OUTPUT",
		"task-wait  demo-1  process.restart  awaiting_approval  -    1m ago   waiting, 59m left                                inc-1     -",
		"task-held  demo-2  process.restart  awaiting_approval  -    3m ago   by alice (operator) 30s ago, waiting for budget  inc-2     -",
		"task-late  demo-3  process.restart  awaiting_approval  -    2h ago   waiting, deadline passed 1h ago                  inc-3     -",
		"task-done  demo-1  process.restart  succeeded          12   5h ago   by bob (admin) 5h ago                            inc-4     restarted pid 42",
		"task-auto  demo-2  disk.cleanup     running            3    10s ago  -                                                inc-5     -",
	}, splitLines(out))

	out, _ = render(t, formatJSON, objs, taskTable)
	var list []map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &list))
	for _, o := range list {
		require.Equal(t, []string{"action", "agent", "approvalDeadline", "approvedAt", "approvedBy", "createdAt", "finishedAt", "id", "incident", "output", "params", "seq", "state"}, keys(o))
	}
	require.Equal(t, "awaiting_approval", list[0]["state"])
	require.Equal(t, "2026-03-01T12:59:00Z", list[0]["approvalDeadline"])
	require.Equal(t, "", list[0]["approvedBy"])
	require.Nil(t, list[0]["approvedAt"])
	require.Equal(t, "bob (admin)", list[3]["approvedBy"])
	require.Equal(t, "2026-03-01T07:00:00Z", list[3]["approvedAt"])
	require.Nil(t, list[3]["approvalDeadline"])
	require.Equal(t, map[string]any{"pidfile": "/run/a.pid"}, list[0]["params"])

	var hint bytes.Buffer
	awaitingHint(&hint, objs)
	require.Equal(t, "3 tasks awaiting approval: tendctl approve task ID (task-wait, task-held, task-late)\n", hint.String())
	hint.Reset()
	awaitingHint(&hint, objs[:1])
	require.Equal(t, "1 task awaiting approval: tendctl approve task task-wait\n", hint.String())
	hint.Reset()
	awaitingHint(&hint, objs[3:])
	require.Empty(t, hint.String())
}

func TestCredentialOutput(t *testing.T) {
	cs := []*adminv1.Credential{
		{Name: "alice", Role: "operator", Serial: "5c1f9a0e4b7d2c3a", IssuedAt: timestamppb.New(fixedNow.Add(-24 * time.Hour)),
			ExpiresAt: timestamppb.New(fixedNow.Add(29 * 24 * time.Hour)), IssuedBy: "admin (admin)"},
		{Name: "old-ci", Role: "viewer", Serial: "9e", IssuedAt: timestamppb.New(fixedNow.Add(-40 * 24 * time.Hour)),
			ExpiresAt: timestamppb.New(fixedNow.Add(-10 * 24 * time.Hour)), Revoked: true},
	}
	objs := objects(cs, toCredentialObject)
	out, _ := render(t, formatTable, objs, credentialTable)
	require.Equal(t, []string{
		"NAME     ROLE       SERIAL             EXPIRES           REVOKED   ISSUED-BY",
		"alice    operator   5c1f9a0e4b7d2c3a   in 29d            no        admin (admin)",
		"old-ci   viewer     9e                 expired 10d ago   yes       -",
	}, splitLines(out))

	out, _ = render(t, formatJSON, objs, credentialTable)
	var list []map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &list))
	require.Equal(t, []string{"expiresAt", "issuedAt", "issuedBy", "name", "revoked", "role", "serial"}, keys(list[0]))
	require.Equal(t, map[string]any{
		"name": "alice", "role": "operator", "serial": "5c1f9a0e4b7d2c3a", "issuedAt": "2026-02-28T12:00:00Z",
		"expiresAt": "2026-03-30T12:00:00Z", "issuedBy": "admin (admin)", "revoked": false,
	}, list[0])
	require.Equal(t, true, list[1]["revoked"])
}

func TestKeyOutput(t *testing.T) {
	ks := []*adminv1.SigningKeyInfo{
		{KeyId: "1a2b3c4d5e6f7081", State: "retired", CreatedAt: timestamppb.New(fixedNow.Add(-90 * 24 * time.Hour)), AgentsHolding: 0, AgentsTotal: 20},
		{KeyId: "9f2c4e1a7b3d5f60", State: "active", CreatedAt: timestamppb.New(fixedNow.Add(-30 * 24 * time.Hour)), AgentsHolding: 20, AgentsTotal: 20},
		{KeyId: "0b1c2d3e4f506172", State: "published", CreatedAt: timestamppb.New(fixedNow.Add(-2 * time.Minute)), AgentsHolding: 18, AgentsTotal: 20},
	}
	objs := objects(ks, toKeyObject)
	out, _ := render(t, formatTable, objs, keyTable)
	require.Equal(t, []string{
		"KEY-ID             STATE       CREATED   AGENTS",
		"1a2b3c4d5e6f7081   retired     90d ago   0/20",
		"9f2c4e1a7b3d5f60   active      30d ago   20/20",
		"0b1c2d3e4f506172   published   2m ago    18/20",
	}, splitLines(out))

	out, _ = render(t, formatJSON, objs, keyTable)
	var list []map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &list))
	require.Equal(t, map[string]any{
		"keyId": "0b1c2d3e4f506172", "state": "published", "createdAt": "2026-03-01T11:58:00Z",
		"agentsHolding": 18.0, "agentsTotal": 20.0,
	}, list[2])
}

const shadowSpec = `{"selector":{"matchLabels":{"role":"web"}},"mode":"shadow","autonomous":false,` +
	`"check":{"type":"tcp","interval":"5s","timeout":"2s","tcp":{"address":"127.0.0.1:5432"}},"trigger":{"failures":3,"window":5},` +
	`"remediation":{"action":"process.restart","params":{"match":{"pidfile":"/run/db.pid"}},"timeout":"30s","requireApproval":false,` +
	`"verify":{"within":"1m"},"maxAttempts":3,"backoff":"30s","cooldown":"10m"},` +
	`"limits":{"maxConcurrent":"2","maxPerHour":10,"breaker":{"failures":5,"window":"1h"},"correlation":{"percent":50,"window":"5m","minAgents":3}}}`

func describePolicyOutput(t *testing.T, resp *adminv1.GetPolicyResponse) string {
	t.Helper()
	var b bytes.Buffer
	require.NoError(t, describePolicy(&b, fixedNow, resp))
	return b.String()
}

func TestDescribePolicySafety(t *testing.T) {
	pol := &adminv1.Policy{Name: "db-down", Version: 2, SpecJson: []byte(shadowSpec)}
	ts := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(fixedNow.Add(d)) }

	t.Run("all clear, shadow with nothing recorded", func(t *testing.T) {
		out := describePolicyOutput(t, &adminv1.GetPolicyResponse{Policy: pol, Status: &adminv1.PolicyStatus{Running: 1, StartedLastHour: 4, BreakerFailures: 1}})
		require.Contains(t, out, "Safety:\n"+
			"  Circuit breaker:  closed: 1 failed attempt counted in the last 1h (opens at 5)\n"+
			"  Correlated hold:  none\n"+
			"  Tasks:            1 running (max 2), 4 started in the last hour (max 10)\n"+
			"Spec:\n")
		require.True(t, strings.HasSuffix(out, "\nWould have acted (shadow):\n  none\n"), out)
	})

	t.Run("breaker open, correlated hold, decisions newest first", func(t *testing.T) {
		opened := fixedNow.Add(-5 * time.Minute)
		st := &adminv1.PolicyStatus{
			BreakerOpen: true, BreakerReason: "5 failed attempts within 1h", BreakerOpenedAt: timestamppb.New(opened), BreakerFailures: 5,
			Correlated: true, CorrelatedReason: "12 of 20 agents failing within 5m", FleetIncident: "inc-fleet",
			WouldHaveActed: []*adminv1.ShadowDecision{
				{At: ts(-3 * time.Minute), Incident: "inc-a", Agent: "db-1", Action: "process.restart", ParamsJson: []byte(`{"match": {"pidfile": "/run/db.pid"}}`)},
				{At: ts(-20 * time.Second), Incident: "inc-b", Agent: "db-2", Action: "process.restart", ParamsJson: []byte(`{}`)},
				{At: ts(-time.Hour), Incident: "inc-c", Agent: "db-3"},
			},
		}
		out := describePolicyOutput(t, &adminv1.GetPolicyResponse{Policy: pol, Status: st})
		require.Contains(t, out, "Safety:\n"+
			"  Circuit breaker:  OPEN since "+opened.Local().Format(time.RFC3339)+" (5m ago): 5 failed attempts within 1h\n"+
			"                    5 failed attempts counted in the last 1h; the policy escalates instead of acting until: tendctl rearm policy db-down\n"+
			"  Correlated hold:  HELD: 12 of 20 agents failing within 5m; fleet incident inc-fleet\n"+
			"                    no task is sent to any of its agents until few enough fail, or: tendctl rearm policy db-down\n"+
			"  Tasks:            0 running (max 2), 0 started in the last hour (max 10)\n")
		require.True(t, strings.HasSuffix(out, "\nWould have acted (shadow):\n"+
			"  WHEN      AGENT   ACTION            PARAMS                                INCIDENT\n"+
			"  20s ago   db-2    process.restart   {}                                    inc-b\n"+
			"  3m ago    db-1    process.restart   {\"match\":{\"pidfile\":\"/run/db.pid\"}}   inc-a\n"+
			"  1h ago    db-3    -                 -                                     inc-c\n"), out)
	})

	t.Run("enforce policy: no shadow section unless decisions", func(t *testing.T) {
		enforce := &adminv1.Policy{Name: "db-down", Version: 3, SpecJson: []byte(strings.Replace(shadowSpec, `"mode":"shadow"`, `"mode":"enforce"`, 1))}
		out := describePolicyOutput(t, &adminv1.GetPolicyResponse{Policy: enforce, Status: &adminv1.PolicyStatus{}})
		require.NotContains(t, out, "Would have acted")
		require.Contains(t, out, "  Circuit breaker:  closed: 0 failed attempts counted in the last 1h (opens at 5)\n")

		// Decisions from before the policy was switched to enforce are shown.
		out = describePolicyOutput(t, &adminv1.GetPolicyResponse{Policy: enforce, Status: &adminv1.PolicyStatus{
			WouldHaveActed: []*adminv1.ShadowDecision{{At: ts(-time.Minute), Incident: "inc-a", Agent: "db-1", Action: "process.restart", ParamsJson: []byte(`{}`)}}}})
		require.Contains(t, out, "Would have acted (shadow):\n  WHEN")
	})

	t.Run("rails turned off, no status", func(t *testing.T) {
		off := &adminv1.Policy{Name: "db-down", Version: 4, SpecJson: []byte(strings.NewReplacer(
			`"breaker":{"failures":5`, `"breaker":{"failures":0`, `"percent":50`, `"percent":0`, `"mode":"shadow"`, `"mode":"enforce"`).Replace(shadowSpec))}
		out := describePolicyOutput(t, &adminv1.GetPolicyResponse{Policy: off, Status: &adminv1.PolicyStatus{}})
		require.Contains(t, out, "  Circuit breaker:  off (spec.limits.breaker.failures: 0)\n  Correlated hold:  off (spec.limits.correlation.percent: 0)\n")

		out = describePolicyOutput(t, &adminv1.GetPolicyResponse{Policy: off})
		require.Contains(t, out, "Safety:\n  <not reported: the control plane sent no status (is its remediation loop running?)>\nSpec:\n")
	})
}
