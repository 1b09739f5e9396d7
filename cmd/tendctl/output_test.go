package main

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"sort"
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
